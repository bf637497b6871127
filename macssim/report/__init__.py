"""Reports: a replay's records as CSV, plots a person would rather look at than read, a
Perfetto timeline, and ``run.json`` so the run can be reproduced; a sweep's results as
one self-contained HTML page."""

from macssim._errors import ReportError
from macssim.report._html import Choice, write_sweep_report
from macssim.report._summary import SUMMARY_COLUMNS, summarize
from macssim.report._write import MANIFEST, Report, ReportWriter, write_report

__all__ = ["MANIFEST", "SUMMARY_COLUMNS", "Choice", "Report", "ReportError", "ReportWriter",
           "summarize", "write_report", "write_sweep_report"]
