"""Pruning Lab web app. `python app.py` launches it (PRUNING_LAB_HOST / PRUNING_LAB_PORT); Spaces run it too."""
from ui import build_app, launch_kwargs, warm_up

demo = build_app()

if __name__ == "__main__":
    # at start, in the background while the page is already served: the estimate's machine rates, the embedded model
    # loaded in the job worker process (converted once on a fresh machine) and the default text tokenised; the page shows the step and keeps
    # Run disabled until it is done (ui.base.READY)
    warm_up(background=True)
    demo.queue(max_size=64, default_concurrency_limit=1).launch(**launch_kwargs())
