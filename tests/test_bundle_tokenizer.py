"""One tokenizer rule for the exporter and both apps: a TemplateProcessing post-processor, and the
vocabulary read from vocab.txt, which the exporter writes from the WordPiece model itself."""

import json

import pytest
from tokenizers import Tokenizer, processors

from toolchain import UserError, backbone
from toolchain.export.tokenizer import vocab_txt, write


@pytest.fixture(scope="module")
def tok():
    return backbone.load("tiny-random").tokenizer()


def test_bundle_vocab_txt_is_the_wordpiece_models_vocabulary(tok, tmp_path):
    (tmp_path / "src").mkdir()
    write(tok, tmp_path / "src", tmp_path, 32)
    lines = (tmp_path / "vocab.txt").read_text(encoding="utf-8").split("\n")[:-1]
    model = json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))["model"]["vocab"]
    assert {w: i for i, w in enumerate(lines)} == model


def test_bert_processing_is_refused_as_the_apps_refuse_it(tok, tmp_path):
    bert = Tokenizer.from_str(tok.to_str())
    bert.post_processor = processors.BertProcessing(("[SEP]", tok.token_to_id("[SEP]")),
                                                    ("[CLS]", tok.token_to_id("[CLS]")))
    (tmp_path / "src").mkdir()
    with pytest.raises(UserError, match="post_processor BertProcessing"):
        write(bert, tmp_path / "src", tmp_path, 32)
    assert not (tmp_path / "tokenizer.json").exists()


def test_a_vocabulary_with_an_id_gap_is_refused(tok):
    cfg = json.loads(tok.to_str())
    vocab = cfg["model"]["vocab"]
    top = max(vocab, key=vocab.get)
    vocab[top] = len(vocab) + 5
    with pytest.raises(UserError, match="no token with id"):
        vocab_txt(Tokenizer.from_str(json.dumps(cfg)))
