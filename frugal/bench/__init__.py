"""`python -m frugal bench`: each lesson's headline measurement on this machine's hardware; `python -m frugal report`
writes the committed results as markdown.

runner.py holds the section registry and `run`; report.py the report writer; each lesson's section is a file of its
own (imported here in the order `run` runs them), with the tables and headlines the report makes of its rows.
"""
from frugal.bench.runner import (REPORTS, SECTIONS, BenchContext, SectionReport, fresh_device, meta_model,
                                 print_table, run, section)
from frugal.bench.report import (README_END, README_START, Column, Table, headline_report, markdown_report,
                                 update_readme)
from frugal.bench import (baseline, precision, checkpointing, data_parallel, zero, model_parallel,  # noqa: F401
                          kernels, recipe_search, recipe, fp8, quality)

__all__ = ["REPORTS", "SECTIONS", "BenchContext", "SectionReport", "fresh_device", "meta_model", "print_table", "run",
           "section", "README_END", "README_START", "Column", "Table", "headline_report", "markdown_report",
           "update_readme"]
