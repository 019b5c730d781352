"""One self-contained HTML report for `run`, `simulate`, `plan` and `validate`.

`content` says what a report holds (no plotting library); `html` draws it with
Plotly, its JavaScript embedded, so the file opens offline. Commands import
this package only when given `--report`.
"""

from .content import Frontier, Headline, Report
from .html import write_report

__all__ = ["Frontier", "Headline", "Report", "write_report"]
