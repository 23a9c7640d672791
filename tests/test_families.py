"""Every tiny model family through the pipeline: forward, exact sparsity over the pruned layers, the honest
all-decoder-weights figure with its per-kind breakdown, 2:4, save and reload; mixture-of-experts statistics from the
tokens routed to each expert; per-block call arguments (Gemma's sliding-window layers); structure errors.

Tiny random-init models (hidden 64), 4-8 calibration windows of 32-64 tokens: seconds per test.
"""
import json
import types

import pytest
import torch
from torch import nn

from pruning.blocks import ModelStructureError, weight_inventory
from pruning.config import PruneConfig
from pruning.errors import InputError
from pruning.models import TINY_FAMILIES, TINY_MOE_FAMILIES, load_model, save_pretrained, tiny_model
from pruning.moe import ExpertStats, find_experts, fused_param_names
from pruning.patterns import check_mask, parse_pattern
from pruning.pipeline import capture_inputs, prune_model, prunable_layers, run_block
from pruning.solve import prune_layer

from _tiny import cli

DENSE_FAMILIES = tuple(f for f in TINY_FAMILIES if f not in TINY_MOE_FAMILIES)


def windows(n=8, seqlen=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, 384, (n, seqlen), generator=g)


def blocks_of(model):
    from pruning.blocks import find_blocks

    return find_blocks(model)[1]


def counted(model):
    """(zeros, numel) over every parameter with >= 2 dims inside the decoder blocks, counted here independently."""
    z = n = 0
    for blk in blocks_of(model):
        for p in blk.parameters():
            if p.dim() >= 2:
                z += int((p == 0).sum())
                n += p.numel()
    return z, n


# --------------------------------------------------------------------------------- every family, two solvers


@pytest.mark.parametrize("solver", ["wanda", "sparsegpt"])
@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_family_prunes_exactly_and_reports_honestly(family, solver):
    model, tok = tiny_model(family)
    ids = windows(1, 24)
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=ids).logits).all()
    rep = prune_model(model, tok, PruneConfig(solver=solver, sparsity=0.5), windows=windows(4, 32))
    # exact over every pruned layer (every layer's numel is even here)
    assert all(l["zeros"] * 2 == l["numel"] for l in rep["layers"]), family
    assert rep["sparsity_pruned_layers"] == 0.5
    # every weight matrix of every block is either pruned or dense by design (router) -- nothing silently dense
    z, n = counted(model)
    assert rep["sparsity"] == pytest.approx(z / n, abs=0, rel=1e-12)
    by_kind = rep["sparsity_by_kind"]
    assert sum(v["numel"] for v in by_kind.values()) == n and sum(v["zeros"] for v in by_kind.values()) == z
    assert by_kind["attention"]["sparsity"] == 0.5 and by_kind["attention"]["numel"] > 0
    assert all(l["rel_error"] > 0 for l in rep["layers"])
    assert not any(w.startswith("not pruned") for w in rep["warnings"]), rep["warnings"]
    assert any(w.startswith("left dense by design") and "norm" in w for w in rep["warnings"])
    if family in TINY_MOE_FAMILIES:
        E = 4
        n_blocks = len(blocks_of(model))
        assert by_kind["experts"]["sparsity"] == 0.5 and by_kind["router"]["zeros"] == 0
        assert rep["sparsity"] < 0.5  # the dense router counts
        assert len(rep["experts"]) == n_blocks * E and all(x["tokens"] > 0 and x["pruned"] == solver for x in rep["experts"])
        assert sum(1 for l in rep["layers"] if ".experts." in l["name"]) == n_blocks * E * 3
        assert any("routers (counted in the sparsity): mlp.gate.weight" in w for w in rep["warnings"])
    else:
        assert rep["sparsity"] == 0.5 and set(by_kind) <= {"attention", "mlp"} and rep["experts"] == []
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=ids).logits).all()


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_family_two_four_and_save_reload(family, tmp_path):
    model, tok = tiny_model(family)
    rep = prune_model(model, tok, PruneConfig(solver="wanda", pattern="2:4"), windows=windows(4, 32))
    pat = parse_pattern("2:4")
    for blk in blocks_of(model):
        for name, lin in prunable_layers(blk).items():
            check_mask(lin.get_weight() != 0, pat, pat.sparsity(0))  # raises unless exactly 2 of every 4 are zero
    assert rep["sparsity_pruned_layers"] == 0.5
    save_pretrained(model, tok, tmp_path / "m")
    again, _ = load_model(str(tmp_path / "m"))
    ids = windows(2, 24, seed=1)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, again(input_ids=ids).logits)
    assert counted(again) == counted(model)


# --------------------------------------------------------------------------------- the families' specifics


def test_new_family_shapes():
    g3, _ = tiny_model("gemma3")
    attn = g3.model.layers[0].self_attn
    assert attn.k_proj.weight.shape == (16, 64) and attn.q_norm is not None  # one KV head, q/k norms
    assert g3.config.layer_types == ["sliding_attention", "full_attention", "sliding_attention"]
    phi, _ = tiny_model("phi3")
    assert phi.model.layers[0].self_attn.qkv_proj.weight.shape == (128, 64)
    assert phi.model.layers[0].mlp.gate_up_proj.weight.shape == (256, 64)
    mx, _ = tiny_model("mixtral")
    assert len(mx.model.layers) == 3 and mx.model.layers[0].mlp.experts.gate_up_proj.shape == (4, 256, 64)
    assert not any(isinstance(m, nn.Linear) for m in mx.model.layers[0].mlp.modules())  # fused, no nn.Linear
    q2, _ = tiny_model("qwen2_moe")
    names = set(prunable_layers(q2.model.layers[0]))
    assert {"mlp.shared_expert.gate_proj", "mlp.experts.3.down_proj"} <= names
    assert "mlp.shared_expert_gate" not in names and "mlp.gate" not in names  # routers stay dense


@pytest.mark.parametrize("family", ["gemma2", "gemma3"])
def test_sliding_window_blocks_get_their_own_arguments(family):
    """Block by block with the captured arguments reproduces the model's own hidden states; giving every block what
    block 0 (sliding window 16) gets would not (the global layer sees all 64 positions)."""
    model, _ = tiny_model(family)
    ids = windows(2, 64)
    with torch.no_grad():
        ref = model(input_ids=ids, output_hidden_states=True).hidden_states  # embeddings, block 0, 1, final norm
    inputs = capture_inputs(model, ids, 2)
    blocks = blocks_of(model)
    h = inputs
    for b in range(len(blocks) - 1):
        h = h.next(run_block(blocks[b], h))
        torch.testing.assert_close(h.hidden[0], ref[b + 1], rtol=1e-5, atol=1e-5)
    shared = type(inputs)(inputs.hidden, inputs.args, inputs.kwargs)  # block 0's arguments for all
    out = run_block(blocks[1], shared.next(run_block(blocks[0], shared)))
    assert not torch.allclose(out[0], ref[2], rtol=1e-3, atol=1e-3)


# --------------------------------------------------------------------------------- mixture of experts


def test_expert_grams_are_from_the_tokens_routed_to_each_expert():
    model, _ = tiny_model("mixtral")
    blk = model.model.layers[0]
    inputs = capture_inputs(model, windows(4, 32), 2)
    seen = []
    hook = blk.mlp.register_forward_pre_hook(lambda m, a: seen.append(a[0].reshape(-1, a[0].shape[-1])))
    (fe,), bad = find_experts(blk)
    assert bad == {} and fe.name == "mlp.experts" and fe.n_experts == 4 and fe.inter == 128
    with ExpertStats([fe], ("gate_up", "down")) as st:
        run_block(blk, inputs)
    hook.remove()
    H = torch.cat(seen)  # (T, 64): every token entering the MoE
    _, _, idx = blk.mlp.gate(H)  # the router's own top-2 choice
    total = 0
    for e in range(4):
        X = H[(idx == e).any(-1)]
        total += X.shape[0]
        assert st.tokens(fe, e) == X.shape[0] > 0
        torch.testing.assert_close(st.gram(fe, e, "up_proj"), X.t() @ X, rtol=1e-4, atol=1e-4)
        gate, up = (X @ blk.mlp.experts.gate_up_proj[e].t()).chunk(2, dim=-1)
        A = blk.mlp.experts.act_fn(gate) * up  # the expert's intermediate activations: down_proj's input
        torch.testing.assert_close(st.gram(fe, e, "down_proj"), A.t() @ A, rtol=1e-4, atol=1e-3)
    assert total == 2 * H.shape[0]  # top-2: every token reaches two experts


def test_expert_slices_write_back_in_place():
    model, _ = tiny_model("qwen3_moe")
    blk = model.model.layers[1]
    lin = prunable_layers(blk)["mlp.experts.2.up_proj"]
    fused = blk.mlp.experts.gate_up_proj
    assert lin.shape == (64, 64) and lin.get_weight().data_ptr() == fused[2, 64:].data_ptr()
    lin.set_weight(torch.zeros(64, 64))
    assert bool((fused[2, 64:] == 0).all()) and bool((fused[2, :64] != 0).all()) and bool((fused[1] != 0).all())


def _never_route_to(gate_module, expert):
    """Make a router never pick ``expert`` (its logit at -inf before the top-k)."""
    orig = type(gate_module).forward

    def forward(self, hidden_states):
        saved = self.weight.data.clone()
        logits, _, _ = orig(self, hidden_states)
        logits = logits.clone()
        logits[:, expert] = float("-inf")
        probs = torch.softmax(logits.float(), dim=-1)
        top, index = torch.topk(probs, self.top_k, dim=-1)
        assert torch.equal(saved, self.weight.data)
        return logits, top / top.sum(-1, keepdim=True), index

    gate_module.forward = types.MethodType(forward, gate_module)


def test_an_expert_without_tokens_is_pruned_by_magnitude_and_named():
    model, tok = tiny_model("mixtral", num_hidden_layers=2)
    blk = model.model.layers[1]
    _never_route_to(blk.mlp.gate, 3)
    W_down = blk.mlp.experts.down_proj[3].detach().clone()
    events = []
    rep = prune_model(model, tok, PruneConfig(solver="sparsegpt", sparsity=0.5), windows=windows(4, 32),
                      on_event=events.append)
    rec = {(x["block"], x["name"]): x for x in rep["experts"]}
    assert rec[(1, "mlp.experts.3")] == {"block": 1, "name": "mlp.experts.3", "tokens": 0,
                                         "pruned": "magnitude (no calibration token)"}
    assert all(x["tokens"] > 0 and x["pruned"] == "sparsegpt" for k, x in rec.items() if k != (1, "mlp.experts.3"))
    msgs = [e.message for e in events if type(e).__name__ == "WarningEvent"]
    assert any("block 1: expert mlp.experts.3 received no calibration token" in m and "magnitude" in m for m in msgs)
    want = prune_layer(W_down, None, solver="magnitude", sparsity=0.5).weight
    assert torch.equal(blk.mlp.experts.down_proj[3], want)
    assert rep["sparsity_pruned_layers"] == 0.5


def test_moe_true_sequential_prunes_every_expert_exactly():
    model, tok = tiny_model("qwen2_moe")
    rep = prune_model(model, tok, PruneConfig(solver="wanda", sparsity=0.5, true_sequential=True), windows=windows(4, 32))
    names = [l["name"] for l in rep["layers"] if l["block"] == 0]
    assert names.index("mlp.experts.0.up_proj") < names.index("mlp.experts.0.down_proj")
    assert len(rep["layers"]) == 2 * (7 + 4 * 3) and rep["sparsity_pruned_layers"] == 0.5
    assert rep["sparsity_by_kind"]["experts"]["sparsity"] == 0.5 and rep["sparsity_by_kind"]["mlp"]["sparsity"] == 0.5


@pytest.mark.parametrize("solver", ["magnitude", "ria", "admm", "alps", "sparsefw", "wanda+admm"])
def test_moe_every_per_layer_solver(solver):
    model, tok = tiny_model("qwen3_moe", num_hidden_layers=1)
    s, _, u = solver.partition("+")
    opts = {"iters": 4} if s == "sparsefw" else {"iters": 4, "gradual_iters": 2} if s == "admm" else \
        {"max_iter": 10} if s == "alps" else {}
    rep = prune_model(model, tok, PruneConfig(solver=s, update=u or "none", sparsity=0.5, options=opts),
                      windows=windows(4, 32))
    assert rep["sparsity_pruned_layers"] == pytest.approx(0.5, abs=1e-9)
    assert rep["sparsity_by_kind"]["experts"]["sparsity"] == pytest.approx(0.5, abs=1e-9)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_block_solver_and_allocation_refused_on_moe_before_any_weight_changes():
    model, tok = tiny_model("mixtral", num_hidden_layers=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(InputError, match=r"solver: 'sparsellm'.*mixture-of-experts.*wanda"):
        prune_model(model, tok, PruneConfig(solver="sparsellm", sparsity=0.5), windows=windows(2, 32))
    with pytest.raises(InputError, match=r"allocation: 'owl'.*uniform"):
        prune_model(model, tok, PruneConfig(solver="wanda", sparsity=0.5, allocation="owl"), windows=windows(2, 32))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# --------------------------------------------------------------------------------- accounting and structure


def test_a_weight_the_pipeline_cannot_prune_is_named_and_counted_dense():
    model, tok = tiny_model("llama")
    for blk in model.model.layers:
        blk.self_attn.extra = nn.Parameter(torch.randn(32, 64))  # a 2-D weight outside any nn.Linear
    rep = prune_model(model, tok, PruneConfig(solver="wanda", sparsity=0.5), windows=windows(4, 32))
    assert any(w.startswith("not pruned: self_attn.extra in every block") for w in rep["warnings"]), rep["warnings"]
    z, n = counted(model)
    assert rep["sparsity"] == pytest.approx(z / n) and rep["sparsity"] < rep["sparsity_pruned_layers"] == 0.5
    assert rep["sparsity_by_kind"]["attention"]["sparsity"] < 0.5


def test_inventory_kinds():
    mx, _ = tiny_model("mixtral")
    mats, vecs = weight_inventory(mx.model.layers[0], fused_param_names(mx.model.layers[0]))
    kinds = {n: k for n, (k, _) in mats.items()}
    assert kinds == {"self_attn.q_proj.weight": "attention", "self_attn.k_proj.weight": "attention",
                     "self_attn.v_proj.weight": "attention", "self_attn.o_proj.weight": "attention",
                     "mlp.gate.weight": "router", "mlp.experts.gate_up_proj": "experts",
                     "mlp.experts.down_proj": "experts"}
    assert vecs == ["input_layernorm.weight", "post_attention_layernorm.weight"]
    q2, _ = tiny_model("qwen2_moe")
    kinds = {n: k for n, (k, _) in weight_inventory(q2.model.layers[0], fused_param_names(q2.model.layers[0]))[0].items()}
    assert kinds["mlp.shared_expert.up_proj.weight"] == "mlp" and kinds["mlp.shared_expert_gate.weight"] == "router"


class _Block(nn.Module):
    def __init__(self, linear: bool):
        super().__init__()
        self.proj = nn.Linear(8, 8) if linear else nn.Identity()
        self.scale = nn.Parameter(torch.ones(8))

    def forward(self, h, **kw):
        return self.proj(h) * self.scale


class _Toy(nn.Module):
    def __init__(self, second_linear=True):
        super().__init__()
        self.config = types.SimpleNamespace(get_text_config=lambda: types.SimpleNamespace())
        self.emb = nn.Embedding(16, 8)
        self.model = nn.Module()
        self.model.layers = nn.ModuleList([_Block(True), _Block(second_linear)])

    def forward(self, input_ids, **kw):
        h = self.emb(input_ids)
        for blk in self.model.layers:
            h = blk(h)
        return h


def test_a_block_without_linears_is_refused_before_any_weight_changes():
    model = _Toy(second_linear=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ModelStructureError, match="model: decoder block 1 .*no linear layer"):
        prune_model(model, None, PruneConfig(solver="magnitude", sparsity=0.5), windows=torch.randint(0, 16, (2, 8)))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_an_unknown_family_is_refused_naming_the_supported_ones():
    class NoBlocks(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(16, 8)
            self.out = nn.Linear(8, 16)

    with pytest.raises(ModelStructureError, match=r"model: NoBlocks has no decoder blocks.*nothing was pruned.*Mixtral"):
        prune_model(NoBlocks(), None, PruneConfig(solver="magnitude"), windows=torch.randint(0, 16, (2, 8)))


@pytest.mark.slow
def test_cli_on_a_tiny_mixtral_reports_the_experts(tmp_path):
    """The issue's scenario as a user runs it: ``run --model DIR`` on a saved tiny Mixtral (3 blocks, 4 experts)."""
    m, t = tiny_model("mixtral")
    save_pretrained(m, t, tmp_path / "mixtral")
    out = tmp_path / "r.json"
    p = cli("run", "--model", str(tmp_path / "mixtral"), "--solver", "wanda", "--sparsity", "0.5", "--calib", "pydoc",
            "--nsamples", "4", "--seqlen", "64", "--eval-windows", "2", "--device", "cpu", "--dtype", "float32",
            "--max-new-tokens", "2", "--json", str(out))
    assert p.returncode == 0, p.stderr
    r = json.loads(out.read_text())
    assert len(r["layers"]) == 3 * (4 + 4 * 3) and r["sparsity_pruned_layers"] == 0.5
    assert r["sparsity_by_kind"]["experts"] == {"zeros": 3 * 4 * (256 * 64 + 64 * 128) // 2,
                                                "numel": 3 * 4 * (256 * 64 + 64 * 128), "sparsity": 0.5}
    assert r["sparsity"] == pytest.approx(sum(v["zeros"] for v in r["sparsity_by_kind"].values())
                                          / sum(v["numel"] for v in r["sparsity_by_kind"].values()))
    assert len(r["experts"]) == 12 and "by kind: attention 50.00%" in p.stdout and "experts 50.00%" in p.stdout
    assert f"achieved sparsity {r['sparsity']:.4%} over every decoder weight matrix (48 layers pruned" in p.stdout
