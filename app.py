"""Pruning Lab web app. `python app.py` launches it (PRUNING_LAB_HOST / PRUNING_LAB_PORT); Spaces run it too."""
from ui import build_app, launch_kwargs, warm_up

demo = build_app()

if __name__ == "__main__":
    # before any page view: the estimate's machine rates, and the embedded model loaded in the job worker process
    # (converted once on a fresh machine)
    warm_up()
    demo.queue(max_size=64, default_concurrency_limit=1).launch(**launch_kwargs())
