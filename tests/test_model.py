import pytest
import torch

from toolchain import UserError, backbone
from toolchain.batch import pad_batch
from toolchain.model import MultiTaskModel, TaskModel, build_branch, build_trunk, hf_key_to_ours

TEXTS = [("book a table at a sushi place in brooklyn for 8 pm", None),
         ("what's the weather like in Paris tomorrow?", "Will it rain in Paris?"),
         ("play the latest album by Daft Punk", None)]


def batch(tok):
    tok.enable_truncation(64)
    encs = [tok.encode(a, b) if b else tok.encode(a) for a, b in TEXTS]
    return pad_batch([e.ids for e in encs], [e.type_ids for e in encs], "cpu")


@pytest.mark.parametrize("spec", ["tiny-random", pytest.param("minilm", marks=pytest.mark.minilm)])
def test_our_encoder_matches_transformers_on_real_text(spec):
    from transformers import AutoModel

    bb = backbone.load(spec)
    b = batch(bb.tokenizer())
    ids, tt, mask = b.input_ids, b.token_type_ids, b.attention_mask
    hf = AutoModel.from_pretrained(str(bb.path)).eval()
    ours = build_trunk(bb.cfg, bb.state, bb.depth)
    with torch.no_grad():
        ref = hf(input_ids=ids, token_type_ids=tt, attention_mask=mask, output_hidden_states=True).hidden_states
        got = ours(**b._asdict(), depths=list(range(bb.depth + 1)))
    assert tt.any(), "the pair example must exercise token type ids"
    for d in range(bb.depth + 1):
        diff = (ref[d] - got[d])[mask.bool()].abs().max().item()
        assert diff <= 1e-5, f"depth {d}: max abs diff {diff}"


def test_trunk_stops_at_the_requested_depth():
    bb = backbone.load("tiny-random")
    b = batch(bb.tokenizer())
    full, short = build_trunk(bb.cfg, bb.state, 4), build_trunk(bb.cfg, bb.state, 2)
    with torch.no_grad():
        assert torch.equal(full(**b._asdict(), depths=[2]), short(**b._asdict()))


def test_merged_model_runs_trunk_once_and_matches_each_task_model():
    bb = backbone.load("tiny-random")
    inputs = batch(bb.tokenizer())._asdict()
    torch.manual_seed(0)
    branches = {"a": build_branch(bb.cfg, bb.state, 1, 2, "classification", 5, 0.0),
                "b": build_branch(bb.cfg, bb.state, 3, 1, "tagging", 7, 0.0),
                "c": build_branch(bb.cfg, bb.state, 2, 2, "regression", 1, 0.0)}
    merged = MultiTaskModel(build_trunk(bb.cfg, bb.state, 3), branches).eval()
    calls = []
    for layer in merged.trunk.layers:
        layer.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        out = merged(**inputs)
        assert len(calls) == 3  # one trunk pass up to the deepest attach point
        for name, b in branches.items():
            single = TaskModel(build_trunk(bb.cfg, bb.state, b.attach), b).eval()
            assert torch.allclose(single(**inputs), out[name], atol=1e-6)
    assert out["a"].shape == (3, 5) and out["b"].shape == (3, inputs["input_ids"].shape[1], 7) and out["c"].shape == (3,)


def test_branch_starts_from_the_backbone_layers_above_its_attach_point():
    bb = backbone.load("tiny-random")
    b = build_branch(bb.cfg, bb.state, 2, 2, "classification", 3, 0.1)
    assert torch.equal(b.layers[0].query.weight, bb.state["layers.2.query.weight"])
    assert torch.equal(b.layers[1].ffn_out.bias, bb.state["layers.3.ffn_out.bias"])
    assert torch.equal(b.head.pooler.weight, bb.state["pooler.weight"])
    with pytest.raises(ValueError, match="attaches at depth 3"):
        TaskModel(build_trunk(bb.cfg, bb.state, 2), build_branch(bb.cfg, bb.state, 3, 1, "regression", 1, 0.0))


def test_hf_names_map_to_ours():
    assert hf_key_to_ours("bert.encoder.layer.3.attention.self.query.weight") == "layers.3.query.weight"
    assert hf_key_to_ours("encoder.layer.0.output.LayerNorm.bias") == "layers.0.ffn_norm.bias"
    assert hf_key_to_ours("embeddings.word_embeddings.weight") == "embeddings.word.weight"
    assert hf_key_to_ours("embeddings.position_ids") is None and hf_key_to_ours("cls.predictions.bias") is None


def test_backbone_fingerprint_is_stable_and_sensitive():
    a, b = backbone.load("tiny-random"), backbone.load("tiny-random")
    assert a.fingerprint == b.fingerprint
    b.state["layers.0.query.bias"][0] += 1e-6
    assert backbone.fingerprint(b.state, b.cfg) != a.fingerprint


@pytest.mark.parametrize("spec, message", [
    ("/no/such/model", "not found"), ("./nope", "not found"),
])
def test_unknown_backbone_path(spec, message):
    with pytest.raises(UserError, match=message):
        backbone.load(spec)


def test_backbone_without_safetensors_is_refused(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(UserError, match="no .safetensors weights"):
        backbone.load(str(tmp_path))
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(UserError, match="model_type 'gpt2'"):
        backbone.load(str(tmp_path))
