"""What a run writes besides its checkpoints: metrics.csv, summary.json and atomic text writes (files), curves.png
and the epoch's figures (figures), TensorBoard events, first_batch.png and image grids, and the resource monitor
whose peaks go into metrics.csv, and train.log, the console's lines kept (run_log)."""

from .figures import divergence, epoch_totals, reduced
from .files import EMA_FIELDS, METRIC_FIELDS, TOP5_FIELDS, epoch_line, metric_fields, plot_curves, read_metrics, \
    write_rows, write_summary, write_text
from .first_batch import MAX_TILES, FirstBatch
from .grid import Row, to_uint8, write_grid
from .monitor import ResourceMonitor
from .progress_display import ProgressDisplay
from .run_log import LOG_FILE, RunLog
from .tensorboard_log import FIRST_BATCH, EventLog, open_event_log

__all__ = ["EMA_FIELDS", "FIRST_BATCH", "LOG_FILE", "MAX_TILES", "METRIC_FIELDS", "TOP5_FIELDS", "EventLog",
           "FirstBatch", "ProgressDisplay", "ResourceMonitor", "Row", "RunLog", "divergence", "epoch_line",
           "epoch_totals", "metric_fields", "open_event_log", "plot_curves", "read_metrics", "reduced", "to_uint8",
           "write_grid", "write_rows", "write_summary", "write_text"]
