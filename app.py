"""Pruning Lab web app. `python app.py` launches it (PRUNING_LAB_HOST / PRUNING_LAB_PORT); Spaces imports `demo`."""
from ui import build_app, launch_kwargs, warm_up

demo = build_app()

if __name__ == "__main__":
    warm_up()  # the time estimate's machine rates, measured before any page view can load a model
    demo.queue(max_size=64, default_concurrency_limit=1).launch(**launch_kwargs())
