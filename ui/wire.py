"""Every event listener of the app, in one place (STYLE.md §2.11). Each action has an ``api_name``.

Public API (gradio_client / "Use via API"):
  /prune(config: dict)            streams (progress HTML, layer-error figure, log, metrics HTML, generations HTML,
                                  per-layer table, report dict, job id); the config is PruneConfig.to_dict()-shaped
  /cancel(job_id: str)            '' = every active job of the caller's session; returns a status line
  /lab(model, block, projection, sparsity, pattern, nsamples, seqlen, admm_iters, fw_iters)
                                  streams (status, 6 figures, explanation, summary dict)
  /sweep(model, solvers, patterns, sparsities, nsamples, seqlen, eval_windows, eval_seqlen)
                                  streams (status table, trade-off figure, runs table)
  /cancel_sweep()                 cancels the caller's sweep
  /runs(model, include_precomputed), /overlay(run_a, run_b), /estimate(config) -> seconds
"""
from __future__ import annotations

import gradio as gr

from pruning import SOLVERS

from .handlers import Handlers
from .layout import Controls, solver_info_md


def _toggle_groups(groups: dict, selected: str):
    return [gr.update(visible=(name == selected)) for name in groups]


def wire(c: Controls, h: Handlers) -> None:
    solver_groups = list(c.solver_groups.values())
    update_groups = list(c.update_groups.values())
    with c.demo:
        # --- Prune: form -> live config + estimate ------------------------------------------------------
        form = c.form_inputs()
        gr.on([comp.change for comp in form], h.preview, inputs=form, outputs=[c.config_json, c.estimate],
              show_progress="hidden", trigger_mode="always_last", api_visibility="private", queue=False)

        def on_solver(solver: str):
            is_mask = solver in SOLVERS and SOLVERS.get(solver).kind == "mask"
            return [solver_info_md(solver), gr.update(visible=is_mask), *_toggle_groups(c.solver_groups, solver)]

        c.solver.change(on_solver, c.solver, [c.solver_info, c.update_row, *solver_groups], show_progress="hidden",
                        api_visibility="private", queue=False)
        c.update.change(lambda u: _toggle_groups(c.update_groups, u), c.update, update_groups, show_progress="hidden",
                        api_visibility="private", queue=False)

        # --- Prune: run / cancel --------------------------------------------------------------------------
        run = c.run_btn.click(h.validate, form, c.config_json, api_visibility="private", show_progress="hidden")
        run.success(h.prune, c.config_json, c.prune_outputs(), api_name="prune", concurrency_limit=8,
                    concurrency_id="prune", show_progress="hidden") \
           .then(h.compare, [c.cmp_model, c.cmp_precomputed], [c.runs_table, c.tradeoff_plot, c.run_a, c.run_b, c.cmp_model],
                 api_visibility="private", show_progress="hidden")
        c.cancel_btn.click(h.cancel, c.job_id, c.cancel_msg, api_name="cancel", queue=False, show_progress="hidden")
        c.run_btn.click(lambda: "", None, c.cancel_msg, api_visibility="private", queue=False, show_progress="hidden")
        gr.api(h.estimate_seconds_api, api_name="estimate")

        # --- Compare --------------------------------------------------------------------------------------
        compare_out = [c.runs_table, c.tradeoff_plot, c.run_a, c.run_b, c.cmp_model]
        c.cmp_refresh.click(h.compare, [c.cmp_model, c.cmp_precomputed], compare_out, api_name="runs", show_progress="hidden")
        gr.on([c.cmp_model.input, c.cmp_precomputed.input, c.compare_tab.select], h.compare, [c.cmp_model, c.cmp_precomputed],
              compare_out, api_visibility="private", show_progress="hidden")
        gr.on([c.run_a.change, c.run_b.change], h.overlay, [c.run_a, c.run_b], c.overlay_plot, api_name="overlay",
              show_progress="hidden")
        c.sw_btn.click(h.sweep, [c.sw_model, c.sw_solvers, c.sw_patterns, c.sw_sparsities, c.sw_nsamples, c.sw_seqlen,
                                 c.sw_eval_windows, c.sw_eval_seqlen, c.sw_updates],
                       [c.sw_status, c.tradeoff_plot, c.runs_table], api_name="sweep", concurrency_limit=4,
                       concurrency_id="sweep", show_progress="hidden") \
            .then(h.compare, [c.cmp_model, c.cmp_precomputed], compare_out, api_visibility="private", show_progress="hidden")
        c.sw_cancel.click(h.cancel_sweep, None, c.cancel_msg, api_name="cancel_sweep", queue=False, show_progress="hidden")

        # --- Lab ------------------------------------------------------------------------------------------
        lab_out = [c.lab_status, c.lab_err_plot, c.lab_resid_plot, c.lab_sched_plot, c.lab_mask_plot, c.lab_hist_plot,
                   c.lab_fw_plot, c.lab_explain, c.lab_summary, c.lab_state]
        c.lab_btn.click(h.lab, [c.lab_model, c.lab_block, c.lab_proj, c.lab_sparsity, c.lab_pattern, c.lab_nsamples, c.lab_seqlen,
                                c.lab_admm_iters, c.lab_fw_iters], lab_out, api_name="lab", concurrency_limit=1,
                        concurrency_id="lab", show_progress="minimal", show_progress_on=[c.lab_err_plot]) \
            .then(h.lab_crop_controls, c.lab_state, [c.lab_row, c.lab_col], api_visibility="private", show_progress="hidden")
        gr.on([c.lab_row.change, c.lab_col.change, c.lab_size.change], h.lab_crop,
              [c.lab_state, c.lab_row, c.lab_col, c.lab_size], c.lab_mask_plot, api_visibility="private",
              show_progress="hidden", trigger_mode="always_last")
        c.lab_model.input(h.lab_model, c.lab_model, [c.lab_block, c.lab_proj], api_visibility="private")

        # --- first visit: fill the Compare tab and the lab's pickers -----------------------------------------
        c.demo.load(h.compare, [c.cmp_model, c.cmp_precomputed], compare_out, api_visibility="private", show_progress="hidden")
        # the estimate first: its first call measures the machine's rates, which must not run while the model loads
        # (or converts, on a fresh machine) for the lab's pickers
        c.demo.load(h.preview, form, [c.config_json, c.estimate], api_visibility="private", show_progress="hidden") \
            .then(h.lab_model, c.lab_model, [c.lab_block, c.lab_proj], api_visibility="private", show_progress="hidden")
