"""Pruning Lab web app. `python app.py` launches it (PRUNING_LAB_HOST / PRUNING_LAB_PORT); Spaces imports `demo`."""
from ui import build_app, launch_kwargs

demo = build_app()

if __name__ == "__main__":
    demo.queue(max_size=64, default_concurrency_limit=1).launch(**launch_kwargs())
