"""`ctb-mobile bench` on a tiny store: merged vs single-task models and the optimum peer, in one run."""

import dataclasses
import types

import numpy as np
import pytest
import torch
from conftest import ROOT, write_recipe

from toolchain import UserError, backbone, bench, store
from toolchain.bench import BenchRequest, bundles, flops, gemm, report, timing
from toolchain.bench.peer import HF_ATOL, ConversionMismatch, check_hf, hf_model
from toolchain.config import load_recipe

for _package in ("onnxruntime", "optimum.exporters.onnx", "matplotlib"):
    pytest.importorskip(_package, reason=f"bench tests need {_package}: pip install -e '.[onnx]' matplotlib")

# (task, attach depth, branch layers) on the 4-layer tiny backbone: two attach depths, like a real plan
BRANCHES = [("snips_intent", 2, 2), ("snips_slots", 3, 1), ("clinc_domain", 3, 1)]


def make_branch(recipe, bb, tok, run_dir, name, attach, layers, seed):
    """A branch run folder without training: backbone layers, a seeded random head."""
    import hashlib

    from toolchain import __version__
    from toolchain.branch_config import BranchConfig, save_branch, weights_bytes
    from toolchain.data import load_task
    from toolchain.model import build_branch

    task = recipe.task(name)
    data = load_task(recipe, task, tok)
    n_out = 1 if task.type == "regression" else len(data.labels)
    branch = build_branch(bb.cfg, bb.state, attach, layers, task.type, n_out, 0.0)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in branch.head.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.5)
    run_dir.mkdir(parents=True)
    weights = weights_bytes(branch)
    save_branch(run_dir, weights, BranchConfig(
        task=name, type=task.type, labels=list(data.labels), attach=attach, layers=layers, metric=task.metric,
        backbone_fingerprint=bb.fingerprint, dev_metric=0.0, seed=seed, max_seq_len=recipe.seq_len(task),
        pair=False, hidden_size=bb.cfg.hidden_size, backbone=recipe.backbone, toolchain_version=__version__,
        weights_sha256=hashlib.sha256(weights).hexdigest()))
    return run_dir


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    recipe = load_recipe(write_recipe(out, (ROOT / "models/tiny.toml").read_text().replace('"data/', '"@DATA@/')))
    for t in recipe.tasks:
        t.max_dev_examples = 24
    bb = backbone.load("tiny-random")
    tok = bb.tokenizer()
    runs = [make_branch(recipe, bb, tok, out / "runs" / n, n, a, layers, i) for i, (n, a, layers) in enumerate(BRANCHES)]
    store.create(out / "store", bb, "tiny-random", runs)
    return out, recipe, bb


@pytest.fixture(scope="module")
def result(tiny):
    out, recipe, _ = tiny
    lines = []
    r = bench.run_bench(BenchRequest(recipe, out / "store", out / "bench", targets=("onnx",), precisions=("fp32",),
                                     lengths=(8, 16, 64), repeats=3, peer=True, guard_examples=24, threads=1),
                        log=lines.append)
    return r, out / "bench", lines


@pytest.mark.slow
def test_the_report_says_the_cpu_the_threads_and_the_measured_ratios(result):
    r, out, lines = result
    md = (out / "bench.md").read_text()
    assert "## Headline" in md and "| onnx/fp32 | 8 |" in md
    # the CPU line is printed first and written to both reports; the threads are the requested one
    assert lines[0] == r["machine"]["cpu_line"] and lines[0].startswith("CPU: ")
    assert all(f"{flag} " in lines[0] for flag in ("avx2", "avx512_vnni", "amx_int8"))
    assert r["machine"]["threads"] == {"pytorch": 1, "onnxruntime": 1}
    assert "threads: pytorch 1, onnxruntime 1" in lines and f"Machine: {lines[0]};" in md
    assert "threads: pytorch 1, onnxruntime 1;" in md
    peer = md.split("## The peer", 1)[1]  # the peer ran: its table row at seq 8 with the measured ratio
    ratio = next(v for k, v in r["summary"]["merged_vs_peer_p50"]["peer/fp32"].items() if str(k) == "8")
    assert "Not run" not in peer and "| fp32 | 8 | " in peer and f"| {ratio:.3f} |" in peer
    head = md.split("## Headline", 1)[1]
    assert f"| onnx/fp32 | 8 | {r['summary']['ratio_p50']['onnx/fp32']['8']:.3f} |" in head
    ext = r["machine"]["vector_extensions"]
    assert f"vector extensions: {', '.join(ext)}" in md if ext else "vector extensions: " in md
    assert (out / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any("timing seq 8" in x for x in lines)
    assert set(r["latency"]) == {"onnx/fp32", "eager/fp32", "peer/fp32"}
    assert all(set(by_len) == {"8", "16"} for by_len in r["latency"].values())
    assert r["bytes"]["onnx/fp32"]["ratio"] < 1  # the merged program shares its trunk
    assert r["memory_mb"]["onnx/fp32"]["merged"] > 0 and r["memory_mb"]["peer/fp32"]["single_sum"] > 0
    for t, _, _ in BRANCHES:
        assert (out / "bundles" / f"single-{t}-onnx-fp32" / "manifest.json").is_file()
        assert store.branch_names(out / "single_stores" / t) == [t]


def test_ratios_and_speed_ups_on_hand_made_timings():
    """Two tasks a and b: merged 2 ms against 1 + 3 ms single-task (0.5), eager merged 10 ms (5x), the peer
    4 + 4 ms (0.25); 2 MFLOP in 2 ms is 1 GFLOP/s, a quarter of a 4 GFLOP/s peak."""
    ms = lambda p50, p90: {"p50_ms": p50, "p90_ms": p90}
    latency = {"onnx/int8": {"8": {"merged": ms(2, 3), "a": ms(1, 2), "b": ms(3, 5)}},
               "eager/fp32": {"8": {"merged": ms(10, 11), "a": ms(6, 7), "b": ms(8, 9)}},
               "peer/int8": {"8": {"a": ms(4, 5), "b": ms(4, 6)}}}
    flops_ = {"merged": {"8": 2e6}, "single_sum": {"8": 3e6}}
    lat = report.summarize_latency(latency, ["a", "b"], flops_, peak=4.0)
    row = lat["onnx/int8"]["8"]
    assert row["single_sum"]["p50_ms"] == 4 and row["single_sum"]["p90_ms"] == 7
    assert row["ratio_p50"] == pytest.approx(0.5) and row["merged_speedup_vs_eager_fp32"] == pytest.approx(5)
    assert row["merged_gflops"] == pytest.approx(1.0) and row["merged_peak_fraction"] == pytest.approx(0.25)
    assert row["single_sum"]["gflops"] == pytest.approx(0.75)
    assert lat["eager/fp32"]["8"]["ratio_p50"] == pytest.approx(10 / 14)
    assert "ratio_p50" not in lat["peer/int8"]["8"]
    sizes = report.summarize_members({"onnx/int8": {"merged": 30, "a": 20, "b": 40}, "peer/int8": {"a": 5, "b": 6}},
                                     ["a", "b"])
    assert sizes["onnx/int8"]["ratio"] == pytest.approx(0.5) and sizes["peer/int8"] == {
        "single": {"a": 5, "b": 6}, "single_sum": 11}
    s = report.summary({"tasks": [{"name": "a"}, {"name": "b"}], "latency": lat, "gemm": {"peak_gflops": 4.0}})
    assert s["merged_vs_peer_p50"] == {"peer/int8": {"8": pytest.approx(0.25)}}
    assert s["ratio_p50"]["onnx/int8"]["8"] == pytest.approx(0.5) and s["goal_met"] is None  # fewer than 4 tasks
    four = report.summary({"tasks": [{}] * 4, "latency": lat, "gemm": {"peak_gflops": 4.0}})
    assert four["goal_met"] == {"onnx/int8": False, "eager/fp32": False}  # 0.5 and 0.71 are above 0.35


def test_the_gemm_peak_is_the_best_engine_at_every_shape():
    shapes = [(8, 32, 64), (16, 32, 32)]
    g = gemm.gemm_peak(shapes, 3, threads=1, engines=("torch", "onnxruntime"))
    x = gemm.gemm_peak(shapes[:1], 3, engines=("xnnpack",))  # one lowering: ExecuTorch export is slow
    assert set(x["engines"]) == {"xnnpack"} and x["peak_gflops"] == x["shapes"][0]["gflops"] > 0
    kept = list((backbone.cache_root() / "gemm").glob("xnnpack-8-32-64-*.pte"))
    assert len(kept) == 1  # the lowered program is kept: the next bench run loads it instead of lowering again
    stamp = kept[0].stat().st_mtime_ns
    assert gemm.gemm_peak(shapes[:1], 3, engines=("xnnpack",))["peak_gflops"] > 0
    assert kept[0].stat().st_mtime_ns == stamp
    engines = [e for e in ("torch", "onnxruntime") if e not in g["skipped"]]
    assert engines[0] == "torch" and [(r["engine"], r["m"], r["k"], r["n"]) for r in g["shapes"]] == \
        [(e, *s) for e in engines for s in shapes]
    assert g["peak_gflops"] == max(r["gflops"] for r in g["shapes"]) > 0
    assert g["engines"][g["peak_engine"]] == g["peak_gflops"] and set(g["engines"]) == set(engines)
    for r in g["shapes"]:
        assert r["gflops"] == pytest.approx(2 * r["m"] * r["k"] * r["n"] / (r["median_ms"] / 1e3) / 1e9)


@pytest.mark.slow
def test_flops_and_gemm_peak(result):
    r, _, _ = result
    metas = {m.task: m for m in store.list_branches(r["store"])}
    heads = {t: flops.head_flops(m, 8, 32) for t, m in metas.items()}
    # tiny backbone (h 32, ffn 64): the merged model runs the trunk to depth 3, then 2 + 1 + 1 branch layers;
    # the single-task models run 2 + 2, 3 + 1 and 3 + 1 layers
    assert r["flops"]["merged"]["8"] == 7 * flops.layer_flops(8, 32, 64) + sum(heads.values())
    assert r["flops"]["single_sum"]["8"] == 12 * flops.layer_flops(8, 32, 64) + sum(heads.values())
    for k in ("8", "16"):
        assert r["flops"]["merged"][k] < r["flops"]["single_sum"][k]
    assert r["gemm"]["peak_gflops"] == max(s["gflops"] for s in r["gemm"]["shapes"]) > 0
    row = r["latency"]["onnx/fp32"]["8"]
    assert row["merged_peak_fraction"] == pytest.approx(row["merged_gflops"] / r["gemm"]["peak_gflops"])
    assert row["merged_gflops"] == pytest.approx(r["flops"]["merged"]["8"] / (row["members"]["merged"]["p50_ms"] / 1e3)
                                                 / 1e9)


@pytest.mark.slow
def test_bundles_are_reused_while_their_sources_are_unchanged(tiny, result):
    out, recipe, _ = tiny
    bundle = result[1] / "bundles" / "merged-onnx-fp32"
    before = (bundle / "model.onnx").stat().st_mtime_ns
    lines = []
    bundles.bundle(recipe, out / "store", "onnx", "fp32", bundle, log=lines.append)
    assert lines == ["reusing merged-onnx-fp32"] and (bundle / "model.onnx").stat().st_mtime_ns == before


@pytest.mark.slow
def test_lengths_beyond_max_seq_len_are_not_run(result):
    r, _, _ = result
    assert r["max_seq_len"] == 32 and "64" in r["not_run"] and "max_seq_len 32" in r["not_run"]["64"]
    assert all("64" not in by_len for by_len in r["latency"].values())


@pytest.mark.slow
def test_peer_dev_metric_and_conversion(result):
    r, out, _ = result
    assert r["peer"]["run"] and "AutoQuantizationConfig" in r["peer"]["quantizer"]
    assert all(v["hf_max_abs"] <= HF_ATOL for v in r["peer"]["tasks"].values())
    for t in r["peer"]["tasks"]:  # optimum's export, then its ORT quantizer: int8 weights are smaller
        peer = out / "peer" / t
        assert (peer / "onnx-int8/model_quantized.onnx").stat().st_size < 0.5 * (peer / "onnx/model.onnx").stat().st_size
    for row in r["dev_metric"].values():
        assert row["examples"] > 0
        # fp32 exports of the same weights: ours and the peer agree with PyTorch on the dev metric
        assert row["onnx/fp32"] == pytest.approx(row["pytorch/fp32"], abs=1e-6)
        assert row["peer/fp32"] == pytest.approx(row["pytorch/fp32"], abs=1e-6)
        assert row["agreement"]["onnx/fp32"] == 1.0 and row["agreement"]["peer/fp32"] == 1.0
    assert "Agreement with PyTorch fp32's predictions" in (out / "bench.md").read_text()


@pytest.mark.parametrize("task_type", ["classification", "tagging", "regression"])
def test_hf_conversion_matches_the_task_model_and_catches_a_corrupt_weight(tiny, task_type):
    from toolchain.infer import encode
    from toolchain.model import MultiTaskModel, build_branch, build_trunk

    _, _, bb = tiny
    attach, layers = 2, 2
    meta = types.SimpleNamespace(type=task_type, labels=[] if task_type == "regression" else ["a", "b", "c"],
                                 attach=attach, layers=layers)  # what the conversion reads of a branch's config
    branch = build_branch(bb.cfg, bb.state, attach, layers, task_type, 1 if task_type == "regression" else 3, 0.0)
    with torch.no_grad():
        for p in branch.head.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.5)
    model = MultiTaskModel(build_trunk(bb.cfg, bb.state, attach), {"t": branch.eval()}).eval()
    _, batch = encode(bb.tokenizer(), ["wake me up at seven", "play some jazz in the kitchen please"], max_len=32)
    batches = [batch.feeds()]  # padded: tagging compares valid positions only
    hf = hf_model(bb, branch, meta)
    assert hf.config.num_hidden_layers == attach + layers
    assert check_hf(hf, model, "t", meta, batches) <= HF_ATOL
    for layer in (0, attach):  # a trunk layer (from the backbone) and a branch layer
        hf = hf_model(bb, branch, meta)
        with torch.no_grad():
            hf.bert.encoder.layer[layer].output.dense.weight[0] += 0.5  # one output feature
        with pytest.raises(ConversionMismatch, match="differs from our task model"):
            check_hf(hf, model, "t", meta, batches)


@pytest.mark.parametrize("kwargs, needle", [
    ({"targets": ("windows",)}, "unknown target 'windows'"),
    ({"targets": ("ios",)}, "CoreML programs run only on Apple devices"),
    ({"precisions": ("fp16",)}, "precision 'fp16' is not supported for onnx"),
    ({"lengths": (16, 0)}, "sequence length 0 is not valid"),
    ({"lengths": (16, "64")}, "sequence length '64' is not valid"),
    ({"lengths": ()}, "no sequence length given"),
    ({"repeats": 0}, "repeats 0 must be a positive integer"),
    ({"threads": -1}, "threads -1 must be a positive integer"),
    ({"lengths": (64, 128)}, "every length (64, 128) is above the recipe's max_seq_len 32"),
    ({"store": "/no/store"}, "store /no/store not found"),
])
def test_bad_requests_are_one_line_user_errors(tiny, tmp_path, kwargs, needle):
    out, recipe, _ = tiny
    args = {"targets": ("onnx",), "precisions": ("fp32",), "lengths": (8,), **kwargs}
    store_dir = args.pop("store", out / "store")
    with pytest.raises(UserError) as e:
        bench.run_bench(BenchRequest(recipe, store_dir, tmp_path / "b", **args), log=lambda m: None)
    assert needle in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "b").exists()


def test_bench_cli_rejects_bad_requests_in_one_line(tiny, cli):
    out, recipe, _ = tiny
    for args, needle in ((["--targets", "ios"], "target 'ios' cannot be benchmarked"),
                         (["--lengths", "16,x"], "--lengths '16,x' is not a comma-separated list"),
                         (["--precisions", "fp16"], "fp16")):
        code, _, err = cli("bench", recipe.path, "--store", out / "store", "--out-dir", out / "cli-bench", *args)
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert not (out / "cli-bench").exists()


@pytest.mark.slow
def test_single_task_models_can_come_from_another_store(tiny, tmp_path):
    """A distilled store benchmarked against the full-depth models it replaces (here: 4-layer branches)."""
    out, recipe, bb = tiny
    tok = bb.tokenizer()
    runs = [make_branch(recipe, bb, tok, tmp_path / "runs" / n, n, 0, 4, i) for i, (n, _, _) in enumerate(BRANCHES)]
    store.create(tmp_path / "full", bb, "tiny-random", runs)
    req = BenchRequest(recipe, out / "store", tmp_path / "b", targets=("onnx",), precisions=("fp32",), lengths=(8,),
                       repeats=2, peer=False, guard_examples=8, threads=1, singles_from=tmp_path / "full")
    r = bench.run_bench(req, log=lambda m: None)
    assert [t["single"] for t in r["tasks"]] == [[0, 4]] * 3 and r["singles_from"] == str(tmp_path / "full")
    heads = sum(flops.head_flops(m, 8, 32) for m in store.list_branches(tmp_path / "full"))
    assert r["flops"]["single_sum"]["8"] == 12 * flops.layer_flops(8, 32, 64) + heads
    assert "/ (0, 4)" in (tmp_path / "b" / "bench.md").read_text()
    store.remove(tmp_path / "full", "snips_slots")
    with pytest.raises(UserError, match="must hold the same tasks"):
        bench.run_bench(dataclasses.replace(req, out_dir=tmp_path / "c"), log=lambda m: None)


X86 = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse4_2 avx fma avx2 avx512f avx512bw avx512_vnni avx512_bf16 amx_int8
processor\t: 1
flags\t\t: fpu sse4_2
"""
ARM = """processor\t: 0
Features\t: fp asimd evtstrm aes asimddp sha512 i8mm
"""
OLD_X86 = "processor\t: 0\nflags\t\t: fpu sse4_2 avx fma avx2\n"


@pytest.mark.parametrize("info, expected", [
    (X86, ["AVX2", "FMA", "AVX-512F", "AVX-512BW", "AVX-512 VNNI", "AVX-512 BF16", "AMX-INT8"]),
    (ARM, ["NEON", "NEON dot product", "I8MM"]),
    (OLD_X86, ["AVX2", "FMA"]),
    ("", []),
])
def test_bench_names_the_cpus_vector_extensions(info, expected):
    assert timing.vector_extensions(info) == expected


def test_the_cpu_line_says_which_int8_kernels_the_cpu_can_take():
    assert timing.cpu_line(timing.cpu(X86)) == \
        "CPU: Intel(R) Xeon(R) Platinum 8480+; avx2 yes, avx512_vnni yes, amx_int8 yes"
    assert timing.cpu_line(timing.cpu(OLD_X86)).endswith("; avx2 yes, avx512_vnni no, amx_int8 no")
    assert timing.cpu(ARM)["int8_flags"] == {"avx2": False, "avx512_vnni": False, "amx_int8": False}


@pytest.mark.slow
def test_every_runtime_runs_on_the_requested_threads(tiny, result):
    """Issue 26: `bench --threads 1` ran ExecuTorch on 2 threads. Every bundle bench times runs on the
    threads asked for, and what bench reports is what the opened programs run on."""
    pytest.importorskip("executorch")
    from executorch.extension.pybindings.portable_lib import _threadpool_get_thread_count

    out, recipe, _ = tiny
    android = result[1] / "bundles" / "merged-android-fp32"
    bundles.bundle(recipe, out / "store", "android", "fp32", android, log=lambda m: None)
    opened = [("android", timing.open_bundle(android, threads=1)),
              ("onnx", timing.open_bundle(result[1] / "bundles" / "merged-onnx-fp32", threads=1))]
    feeds = {"input_ids": [[2, 5, 3]], "attention_mask": [[1, 1, 1]], "token_type_ids": [[0, 0, 0]]}
    opened[0][1].run(**{k: np.asarray(v, dtype=np.int64) for k, v in feeds.items()})
    assert _threadpool_get_thread_count() == 1
    assert timing.threads_used(opened) == {"pytorch": torch.get_num_threads(), "executorch": 1, "onnxruntime": 1}
    assert timing.threads_line(timing.threads_used(opened[1:], False)).endswith("onnxruntime 1")
    assert timing.threads_used([], None) == {"pytorch": torch.get_num_threads(), "onnxruntime": None}


def test_smoothquant_in_the_int8_variants_benchmark_leaves_the_fp32_function_unchanged():
    """benchmarks/onnx_int8_variants.py's SmoothQuant (x / s before the MatMuls that read x, W * s) is
    exact in fp32, with one Mul per distinct MatMul input, so its agreement figures measure the int8
    scheme alone."""
    import importlib.util

    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    spec = importlib.util.spec_from_file_location("variants", ROOT / "benchmarks" / "onnx_int8_variants.py")
    variants = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(variants)
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=s).astype(np.float32), n)
             for n, s in (("g", (8,)), ("b", (8,)), ("w1", (8, 4)), ("w2", (8, 5)), ("w3", (8, 3)))]
    nodes = [helper.make_node("LayerNormalization", ["x", "g", "b"], ["ln"], axis=-1),
             helper.make_node("MatMul", ["ln", "w1"], ["y1"]), helper.make_node("MatMul", ["ln", "w2"], ["y2"]),
             helper.make_node("MatMul", ["x", "w3"], ["y3"])]
    outs = [helper.make_tensor_value_info(y, TensorProto.FLOAT, None) for y in ("y1", "y2", "y3")]
    model = helper.make_model(helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8])],
                                                outs, inits), opset_imports=[helper.make_opsetid("", 18)])
    x = (rng.normal(size=(2, 3, 8)) * np.linspace(0.1, 30, 8)).astype(np.float32)  # outlier channels
    absmax = variants.input_absmax(model, [({"x": x}, np.ones((2, 3)))])
    assert set(absmax) == {"ln", "x"} and np.allclose(absmax["x"], np.abs(x).max((0, 1)))

    def run(m):
        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})

    before = run(model)
    smoothed = onnx.load_from_string(model.SerializeToString())
    variants.smooth(smoothed, absmax, 0.8)
    assert [n.op_type for n in smoothed.graph.node].count("Mul") == 2
    assert {i.name for i in smoothed.graph.initializer} >= {"w1/smoothed", "w2/smoothed", "w3/smoothed"}
    assert not {"w1", "w2", "w3"} & {i.name for i in smoothed.graph.initializer}
    for a, b in zip(before, run(smoothed)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)

