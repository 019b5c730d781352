"""Twenty short chat questions for the real-model tests (SmolLM2 answers them sensibly)."""

QUESTIONS = [
    "What is the capital of France?", "Name three primary colors.", "Write a haiku about the sea.",
    "Who wrote Romeo and Juliet?", "Explain photosynthesis in one sentence.", "What is 12 times 12?",
    "Translate 'good morning' into Spanish.", "What is the boiling point of water in Celsius?",
    "Give me a synonym for happy.", "What planet is known as the Red Planet?", "List two programming languages.",
    "How many days are in a leap year?", "What is the largest ocean on Earth?", "Suggest a name for a pet cat.",
    "What does a thermometer measure?", "Describe a rainbow in a few words.", "What is the opposite of cold?",
    "Who painted the Mona Lisa?", "What language is spoken in Brazil?", "Give one tip for better sleep.",
]
