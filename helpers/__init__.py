"""Helpers for the refusal-toolkit notebooks: one module per step (models, corpora, activations, SAEs, ...)."""

import os

if os.environ.get("REFUSAL_CONSOLE_PROGRESS"):
    # Set by the main job (`helpers.runner`) for the kernels it starts: papermill streams only text, so
    # progress bars must be plain-text tqdm (a line every TQDM_MININTERVAL seconds, with rate and ETA)
    # rather than notebook widgets, whose updates never reach the console. Done here, before sae_lens or
    # transformers bind `tqdm.auto.tqdm`.
    import tqdm.auto
    import tqdm.autonotebook
    import tqdm.std

    for _module in (tqdm.auto, tqdm.autonotebook):
        _module.tqdm, _module.trange = tqdm.std.tqdm, tqdm.std.trange
