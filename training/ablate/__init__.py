"""dali-ablate: an ablation study's arms over several seeds (studies), each a dali-train run directory carried out
as its RunDir's verdict says (runner), reported as results.csv, summary.md and plots (report); `main` is the
command (command)."""

from .command import main
from .report import RESULT_FIELDS, result_row, welch_t, write_plots, write_results, write_summary
from .runner import RunRecord, check_existing, read_record, run_one, run_study
from .studies import ARM_NAME, MANAGED, STUDIES, Study, arm_configs, load_study, skip_reason

__all__ = ["ARM_NAME", "MANAGED", "RESULT_FIELDS", "STUDIES", "RunRecord", "Study", "arm_configs", "check_existing",
           "load_study", "main", "read_record", "result_row", "run_one", "run_study", "skip_reason", "welch_t",
           "write_plots", "write_results", "write_summary"]
