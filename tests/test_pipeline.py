"""Sequential pipeline on tiny random models: events, shared Grams, propagation (16), cancel/restore, bad input."""
import threading

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM

from pruning import events as ev
from pruning.blocks import ModelStructureError, block_linears, find_blocks
from pruning.config import PruneConfig
from pruning.errors import NumericalError
from pruning.pipeline import capture_inputs, capture_layer_problems, collect_grams, prune_model


def build(family: str, seed: int = 0):
    torch.manual_seed(seed)
    if family == "llama":
        m = LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, bos_token_id=1, eos_token_id=2, pad_token_id=2))
    elif family == "opt":
        m = OPTForCausalLM(OPTConfig(vocab_size=128, hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                                     word_embed_proj_dim=64, bos_token_id=1, eos_token_id=2, pad_token_id=2))
    else:
        m = GPT2LMHeadModel(GPT2Config(vocab_size=128, n_embd=64, n_layer=2, n_head=4, bos_token_id=1, eos_token_id=2))
    return m.eval()


@pytest.fixture(scope="module")
def windows():
    return torch.randint(0, 128, (6, 32), generator=torch.Generator().manual_seed(0))


FAMILIES = ["llama", "opt", "gpt2"]


@pytest.mark.parametrize("family", FAMILIES)
def test_prune_model_events_and_sparsity(family, windows):
    m = build(family)
    emb = m.get_input_embeddings().weight.clone()
    events = []
    rep = prune_model(m, None, PruneConfig(solver="sparsegpt", sparsity=0.5, pattern="2:4", batch_size=4), on_event=events.append, windows=windows)
    kinds = [type(e).__name__ for e in events]
    assert kinds[0] == "JobStarted" and kinds[-1] == "BlockDone"
    assert kinds.count("BlockStarted") == kinds.count("BlockDone") == 2
    n_lin = sum(len(block_linears(b)) for b in find_blocks(m)[1])
    assert kinds.count("LayerSolved") == len(rep["layers"]) == n_lin
    # block order: every LayerSolved sits between its BlockStarted and BlockDone
    cur = None
    for e in events:
        if isinstance(e, ev.BlockStarted):
            cur = e.block
        if isinstance(e, ev.LayerSolved):
            assert e.block == cur and 0 < e.rel_error < 1 and e.sparsity >= 0.5
    assert rep["sparsity"] == pytest.approx(0.5, abs=1e-3)
    # every linear in the model is really 2:4 now; embeddings untouched (tied lm_head stays dense)
    for blk in find_blocks(m)[1]:
        for lin in block_linears(blk).values():
            W = lin.get_weight()
            assert bool(((W == 0).reshape(W.shape[0], -1, 4).sum(-1) >= 2).all())
    assert torch.equal(m.get_input_embeddings().weight, emb)


def test_shared_gram_for_qkv_and_gate_up(windows):
    m = build("llama")
    inputs = capture_inputs(m, windows, 3)
    blk = find_blocks(m)[1][0]
    col, _ = collect_grams(blk, block_linears(blk), inputs)
    groups = col.groups()
    assert ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"] in groups
    assert ["mlp.gate_proj", "mlp.up_proj"] in groups
    assert col.gram("self_attn.q_proj")[0] is col.gram("self_attn.v_proj")[0]
    assert col.gram("self_attn.o_proj")[0] is not col.gram("self_attn.q_proj")[0]


def test_symmetric_gram_update_equals_full_product():
    from pruning.pipeline import _SYRK_BLOCK, add_gram_, mirror_upper_

    g = torch.Generator().manual_seed(0)
    for d in (_SYRK_BLOCK * 2, _SYRK_BLOCK * 4 + 64):  # the smallest width that takes the blocked path, and an uneven one
        G = torch.zeros(d, d)
        X1, X2 = torch.randn(300, d, generator=g), torch.randn(200, d, generator=g)
        assert add_gram_(G, X1) and add_gram_(G, X2)
        mirror_upper_(G)
        ref = X1.double().T @ X1.double() + X2.double().T @ X2.double()
        assert torch.equal(G, G.T)
        assert torch.allclose(G.double(), ref, rtol=1e-5, atol=1e-3)
    G = torch.zeros(8, 8)
    assert not add_gram_(G, torch.ones(3, 8)) and torch.equal(G, torch.full((8, 8), 3.0))  # narrow: plain product


def test_blocked_gram_in_the_collector_matches_plain(windows, monkeypatch):
    import pruning.pipeline as pl

    m = build("llama")
    inputs = capture_inputs(m, windows, 3)
    blk = find_blocks(m)[1][0]
    plain, _ = collect_grams(blk, block_linears(blk), inputs)
    monkeypatch.setattr(pl, "_SYRK_BLOCK", 16)  # every input of the tiny model is now "wide"
    blocked, _ = collect_grams(blk, block_linears(blk), inputs)
    for name in block_linears(blk):
        a, b = plain.gram(name)[0], blocked.gram(name)[0]
        assert torch.equal(b, b.T) and torch.allclose(a, b, rtol=1e-5, atol=1e-4), name


def test_shared_gram_gives_same_result_as_separate(windows):
    """Sharing is a pure optimisation: the Gram of q equals one computed from q's own input only."""
    m = build("llama")
    inputs = capture_inputs(m, windows, 3)
    blk = find_blocks(m)[1][0]
    lins = block_linears(blk)
    shared, _ = collect_grams(blk, lins, inputs)
    alone, _ = collect_grams(blk, {"self_attn.k_proj": lins["self_attn.k_proj"]}, inputs)
    assert torch.equal(shared.gram("self_attn.k_proj")[0], alone.gram("self_attn.k_proj")[0])


@pytest.mark.parametrize("family", FAMILIES)
def test_statistics_pass_without_outputs_gives_the_same_grams(family, windows):
    """need_outputs=False stops each forward after the last linear's input: same Grams, counts and order, and
    the last linear itself is never run."""
    m = build(family)
    inputs = capture_inputs(m, windows, 4)  # two batches (4 + 2)
    blk = find_blocks(m)[1][1]
    lins = block_linears(blk)
    full, outs = collect_grams(blk, lins, inputs)
    calls = []
    last = full.order[-1]
    handle = lins[last].module.register_forward_hook(lambda *a: calls.append(1))
    try:
        fast, none = collect_grams(blk, lins, inputs, need_outputs=False)
    finally:
        handle.remove()
    assert len(outs) == 2 and none == [] and calls == []
    assert fast.order == full.order and fast.groups() == full.groups()
    for name in lins:
        assert torch.equal(fast.gram(name)[0], full.gram(name)[0]), name
        assert fast.gram(name)[1] == full.gram(name)[1] == windows.numel()
    # a subset (one true-sequential group) stops after its own last member
    group = {n: lins[n] for n in full.groups()[0]}
    part, _ = collect_grams(blk, group, inputs, need_outputs=False)
    for name in group:
        assert torch.equal(part.gram(name)[0], full.gram(name)[0]), name


def test_sparsegpt_factor_is_shared_within_a_group(windows, monkeypatch):
    """q/k/v (and gate/up) share one Gram, so the pipeline factorises H⁻¹ once per distinct input; the
    pruned weights are those of a run that factorises per layer."""
    import pruning.solvers.sparsegpt as sg

    calls = []
    orig = sg.damped_cholesky
    monkeypatch.setattr(sg, "damped_cholesky", lambda *a, **k: calls.append(a[0].shape) or orig(*a, **k))
    cfg = PruneConfig(solver="sparsegpt", sparsity=0.5, batch_size=4)
    shared = build("llama")
    prune_model(shared, None, cfg, windows=windows)
    n_blocks = len(find_blocks(shared)[1])
    assert len(calls) == 4 * n_blocks  # qkv input, o input, gate/up input, down input
    # without the memo (one factorisation per linear) the weights are identical
    monkeypatch.setattr(sg.SolveContext, "gram_key", staticmethod(lambda *a: object()))
    calls.clear()
    alone = build("llama")
    prune_model(alone, None, cfg, windows=windows)
    assert len(calls) == 7 * n_blocks
    for b1, b2 in zip(find_blocks(shared)[1], find_blocks(alone)[1]):
        for (name, l1), l2 in zip(block_linears(b1).items(), block_linears(b2).values()):
            assert torch.equal(l1.get_weight(), l2.get_weight()), name


def test_sequential_propagation_matches_full_forward_at_zero_sparsity(windows):  # invariant 16
    m = build("llama")
    captured = {}
    blocks = find_blocks(m)[1]
    def grab(mod, args, kw):
        captured["x"] = args[0] if args else kw["hidden_states"]

    h = blocks[1].register_forward_pre_hook(grab, with_kwargs=True)
    with torch.no_grad():
        m(input_ids=windows[:3], use_cache=False)
    h.remove()
    probs = capture_layer_problems(m, None, windows[:3], blocks=[1], names=["self_attn.q_proj"], batch_size=3)
    # G of block-1 q_proj must equal the Gram of the block-1 input after its input layernorm
    x = blocks[1].input_layernorm(captured["x"]).reshape(-1, 64)
    G = probs[(1, "self_attn.q_proj")].G
    assert torch.allclose(G, x.T @ x, rtol=1e-5, atol=1e-4)
    # and pruning at s=0 leaves the model's function unchanged
    with torch.no_grad():
        before = m(windows).logits
    prune_model(m, None, PruneConfig(solver="sparsegpt", sparsity=0.0), windows=windows)
    with torch.no_grad():
        after = m(windows).logits
    assert torch.equal(before, after)


def test_batched_equals_batch1(windows):
    a, b = build("llama"), build("llama")
    ra = prune_model(a, None, PruneConfig(solver="wanda", sparsity=0.5, batch_size=6), windows=windows)
    rb = prune_model(b, None, PruneConfig(solver="wanda", sparsity=0.5, batch_size=1), windows=windows)
    for la, lb in zip(ra["layers"], rb["layers"]):
        assert la["rel_error"] == pytest.approx(lb["rel_error"], rel=1e-4)


def test_true_sequential_runs_and_differs(windows):
    a, b = build("llama"), build("llama")
    ra = prune_model(a, None, PruneConfig(solver="sparsegpt", sparsity=0.6), windows=windows)
    rb = prune_model(b, None, PruneConfig(solver="sparsegpt", sparsity=0.6, true_sequential=True), windows=windows)
    assert [l["name"] for l in ra["layers"]] == [l["name"] for l in rb["layers"]]
    # first group sees identical statistics; o_proj of block 0 sees pruned q/k/v in true-sequential mode
    assert ra["layers"][0]["rel_error"] == pytest.approx(rb["layers"][0]["rel_error"], rel=1e-6)
    assert ra["layers"][3]["rel_error"] != rb["layers"][3]["rel_error"]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_cancel_restores_every_weight(family, windows):
    m = build(family)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    cancel = threading.Event()
    seen = []

    def on_event(e):
        seen.append(e)
        if isinstance(e, ev.LayerSolved) and e.block == 1:
            cancel.set()

    with pytest.raises(ev.Cancelled):
        prune_model(m, None, PruneConfig(solver="sparsegpt", sparsity=0.5), on_event=on_event, cancel=cancel, windows=windows)
    assert sum(isinstance(e, ev.LayerSolved) for e in seen) > 1  # it had written layers before cancelling
    for k, v in m.state_dict().items():
        assert torch.equal(before[k], v), k


def test_failure_restores_and_nan_activations_rejected(windows):
    m = build("llama")
    before = {k: v.clone() for k, v in m.state_dict().items()}
    blk1 = find_blocks(m)[1][1]
    with torch.no_grad():
        blk1.mlp.down_proj.weight[0, 0] = float("inf")  # block 1 outputs become non-finite
    before_bad = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ValueError, match="weights: NaN/Inf in block 1 mlp.down_proj"):
        prune_model(m, None, PruneConfig(solver="wanda", sparsity=0.5), windows=windows)
    with torch.no_grad():  # finite block weights, but non-finite activations (a broken embedding row)
        blk1.mlp.down_proj.weight[0, 0] = 0.0
        m.get_input_embeddings().weight[windows[0, 0]] = float("nan")
    before_bad = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(NumericalError, match="activations: NaN/Inf in the inputs of block 0"):
        prune_model(m, None, PruneConfig(solver="magnitude", sparsity=0.5), windows=windows)
    for k, v in m.state_dict().items():
        assert torch.equal(before_bad[k].nan_to_num(), v.nan_to_num()), k
    assert not torch.equal(before["model.layers.1.mlp.down_proj.weight"], before_bad["model.layers.1.mlp.down_proj.weight"])


def test_nm_not_dividing_rejected_before_touching(windows):
    m = build("llama")
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ValueError, match="pattern: 3:5"):
        prune_model(m, None, PruneConfig(solver="wanda", pattern="3:5"), windows=windows)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_model_without_blocks_rejected():
    with pytest.raises(ModelStructureError, match="model: .*no decoder blocks"):
        find_blocks(torch.nn.Sequential(torch.nn.Embedding(4, 4)))


def test_bf16_forward_fp32_stats(windows):
    m = build("llama").to(torch.bfloat16)
    rep = prune_model(m, None, PruneConfig(solver="sparsegpt", sparsity=0.5), windows=windows)
    assert all(0 < l["rel_error"] < 1 for l in rep["layers"])
    for blk in find_blocks(m)[1]:
        for lin in block_linears(blk).values():
            assert lin.get_weight().dtype == torch.bfloat16
            assert float((lin.get_weight() == 0).float().mean()) == pytest.approx(0.5, abs=1e-3)  # invariant 19


# ------------------------------------------------------------------------------------------------ GPU smoke


@pytest.mark.gpu
@pytest.mark.parametrize("solver,update", [("magnitude", "none"), ("wanda", "none"), ("sparsegpt", "none"), ("admm", "none"),
                                           ("ria", "none"), ("sparsefw", "none"), ("sparsellm", "none"), ("wanda", "admm"),
                                           ("wanda", "exact"), ("sparsefw", "sparsegpt")])
def test_gpu_smoke_tiny_llama_bf16(solver, update, windows):
    """Every solver through the whole pipeline on CUDA with a bf16 model (float32 statistics and solver maths):
    exact sparsity, finite weights, a model that still runs, no warnings. Skips, saying why, without CUDA."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA (checks the pipeline, every solver and SparseFW's dense GPU branch on a bf16 model)")
    m = build("llama").to("cuda", torch.bfloat16)
    opts = {"iters": 10} if solver == "sparsefw" else {"epochs": 2} if solver == "sparsellm" else {}
    rep = prune_model(m, None, PruneConfig(solver=solver, update=update, sparsity=0.5, options=opts), windows=windows)
    assert abs(rep["sparsity"] - 0.5) < 1e-3, rep["sparsity"]
    assert all(l["zeros"] >= l["numel"] // 2 for l in rep["layers"])
    assert all(bool(torch.isfinite(p).all()) and p.is_cuda and p.dtype == torch.bfloat16 for p in m.parameters())
    assert torch.isfinite(m(input_ids=windows[:1].cuda()).logits.float()).all()
    assert [w for w in rep["warnings"] if "calibration tokens" not in w and not w.startswith("left dense by design")] == [], \
        rep["warnings"]


def test_prune_model_requires_windows():
    with pytest.raises(ValueError, match="windows: prune_model needs the calibration token windows"):
        prune_model(build("llama"), None, PruneConfig(solver="magnitude"))
