"""dali-train's training job, in rooms: `recipe` (what a run trains with, the step), `outputs` (what a run writes
besides checkpoints), `loop` (the run, its state, checkpoints and its folder's owner, RunDir), `tools` (dali-eval,
dali-prune, dali-quantize, dali-preview), `ablate` (dali-ablate). At the top: the options (config, checks, options),
the commands (cli, entry), the process group (distributed), measuring (harness, machine) and the one atomic write
(atomic). A room imports another only through its __init__; nothing here is imported by dali_pipes."""
