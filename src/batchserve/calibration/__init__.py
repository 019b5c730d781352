"""Measuring the real engine for the simulator: the calibration step grid and the validation replay.

The fit itself is torch-free and lives in `sim.calibration`; this package runs
the torch engine on a device, so it sits below `entrypoints/` and above both.
"""
