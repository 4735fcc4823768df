"""Catalogs: CSV or YAML, validated before any work, with the row, the column and what is allowed."""

import pytest
import torch

from ops.catalog import CatalogError, read_catalog
from ops.timm_catalog import datasets_of_tag, timm_catalog_rows


def write(path, text):
    path.write_text(text)
    return path


def test_csv_rows_become_entries_with_meta_and_extra_columns(tmp_path):
    torch.save({"w": torch.zeros(1, 1, 3, 3)}, tmp_path / "a.pt")
    catalog = write(tmp_path / "c.csv", "model_id,source,uri,input_size,family,task,lab\n"
                    "a,checkpoint,a.pt,1x28x28,cnn,classification,x1\nr,timm,resnet18,,resnet,,\n")
    a, r = read_catalog(catalog)
    assert a.uri == str((tmp_path / "a.pt").resolve())
    assert a.input_size == (1, 28, 28)
    assert a.meta == {"family": "cnn", "task": "classification"}
    assert a.extra == {"lab": "x1"}
    assert r.pretrained is True and r.input_size is None


def test_yaml_catalog(tmp_path):
    catalog = write(tmp_path / "c.yaml", "models:\n  - {model_id: r, source: timm, uri: resnet18, pretrained: false, seed: 4}\n")
    (entry,) = read_catalog(catalog)
    assert entry.pretrained is False and entry.seed == 4


@pytest.mark.parametrize(
    "text, message",
    [
        ("model_id,source,uri\na,zip,x\n", r"row 1: column 'source': unknown source 'zip' \(allowed: checkpoint, onnx, safetensors, timm, torchscript\)"),
        ("model_id,source,uri\na,timm,resnet18\na,timm,resnet34\n", r"row 2, column 'model_id': 'a' duplicates row 1"),
        ("model_id,source,uri\na,onnx,missing.onnx\n", r"row 1: column 'uri': file 'missing.onnx' not found"),
        ("model_id,source\na,timm\n", r"missing required column 'uri'"),
        ("model_id,source,uri,input_size\na,timm,resnet18,224\n", r"row 1: column 'input_size': '224' is not CxHxW"),
        ("model_id,source,uri,pretrained\na,timm,resnet18,maybe\n", r"row 1: column 'pretrained'"),
        ("model_id,source,uri\n,timm,resnet18\n", r"row 1: column 'model_id' is empty"),
    ],
)
def test_bad_catalog_names_row_column_and_what_is_allowed(tmp_path, text, message):
    with pytest.raises(CatalogError, match=message):
        read_catalog(write(tmp_path / "c.csv", text))


@pytest.mark.parametrize("encoding, line_end", [("utf-8-sig", "\r\n"), ("utf-8", "\r\n"), ("utf-8-sig", "\n")])
def test_csv_with_byte_order_mark_windows_line_ends_and_spaced_headers_is_read(tmp_path, encoding, line_end):
    rows = [" model_id , source ,uri , family", "a,timm,resnet18, resnet ", "b,timm,resnet34,resnet"]
    (tmp_path / "c.csv").write_bytes(line_end.join(rows).encode(encoding) + line_end.encode())
    a, b = read_catalog(tmp_path / "c.csv")
    assert (a.model_id, a.source, a.uri, a.meta) == ("a", "timm", "resnet18", {"family": "resnet"})
    assert (b.model_id, b.extra) == ("b", {})


def test_yaml_with_byte_order_mark_and_windows_line_ends_is_read(tmp_path):
    text = "models:\r\n  - {model_id: r, source: timm, uri: resnet18, pretrained: false}\r\n"
    (tmp_path / "c.yaml").write_bytes(text.encode("utf-8-sig"))
    (entry,) = read_catalog(tmp_path / "c.yaml")
    assert entry.model_id == "r" and entry.pretrained is False


@pytest.mark.parametrize(
    "column, message",
    [
        ("n_conv_layers", r"column 'n_conv_layers': filterdb writes the column 'n_conv_layers' of models.lance itself"),
        ("status", r"column 'status': filterdb writes the column 'status'"),
        ("Load_Seconds", r"column 'Load_Seconds': filterdb writes the column 'load_seconds'"),
        ("Family", r"column 'Family': differs from the catalog column 'family' only in case"),
        ("a.b", r"column 'a.b': a column name must not contain '.'"),
    ],
)
def test_catalog_columns_that_would_collide_in_models_are_refused_by_name(tmp_path, column, message):
    text = f"model_id,source,uri,{column}\na,timm,resnet18,many\n"
    with pytest.raises(CatalogError, match=message):
        read_catalog(write(tmp_path / "c.csv", text))


def test_seed_beyond_64_bits_is_refused(tmp_path):
    with pytest.raises(CatalogError, match=r"row 1: column 'seed': '99999999999999999999' does not fit a 64-bit integer"):
        read_catalog(write(tmp_path / "c.csv", "model_id,source,uri,seed\na,timm,resnet18,99999999999999999999\n"))


def test_catalog_that_is_not_utf8_says_so(tmp_path):
    (tmp_path / "c.csv").write_bytes("model_id,source,uri,family\na,timm,resnet18,caf\xe9\n".encode("latin-1"))
    with pytest.raises(CatalogError, match=r"not UTF-8 text .* save it as UTF-8"):
        read_catalog(tmp_path / "c.csv")


def test_every_problem_is_reported_at_once(tmp_path):
    text = "model_id,source,uri\na,zip,x\nb,onnx,nope.onnx\n"
    with pytest.raises(CatalogError) as error:
        read_catalog(write(tmp_path / "c.csv", text))
    assert "row 1" in str(error.value) and "row 2" in str(error.value)


@pytest.mark.parametrize(
    "tag, expected",
    [
        ("a1_in1k", ("imagenet-1k", "")),
        ("fb_in22k_ft_in1k", ("imagenet-1k", "imagenet-22k")),
        ("laion2b_ft_in12k_in1k", ("imagenet-1k", "laion-2b+imagenet-12k")),
        ("openai", ("openai-wit", "")),
    ],
)
def test_timm_tags_name_train_and_pretrain_data(tag, expected):
    assert datasets_of_tag(tag) == expected


def test_timm_catalog_reads_the_registry_without_network():
    rows = timm_catalog_rows(["resnet18*"], ["*tv*"])
    names = {row["model_id"] for row in rows}
    assert "resnet18.a1_in1k" in names and not any("tv" in n.split(".")[1] for n in names)
    row = next(r for r in rows if r["model_id"] == "resnet18.a1_in1k")
    assert row["family"] == "resnet" and row["train_dataset"] == "imagenet-1k"
    assert row["task"] == "classification" and row["visual_category"] == "natural"


def test_files_are_judged_by_content_the_source_to_use_named(tmp_path):
    from safetensors.torch import save_file

    torch.save({"w": torch.zeros(2, 1, 3, 3)}, tmp_path / "state.onnx")  # a state dict, misnamed
    save_file({"w": torch.zeros(2, 1, 3, 3)}, tmp_path / "w.bin")
    (tmp_path / "empty.pt").write_bytes(b"")
    text = ("model_id,source,uri,weights_file\na,onnx,state.onnx,\nb,checkpoint,w.bin,\nc,checkpoint,empty.pt,\n"
            "d,timm,resnet18,state.onnx\ne,timm,resnet18,w.bin\n")
    with pytest.raises(CatalogError) as error:
        read_catalog(write(tmp_path / "c.csv", text))
    lines = str(error.value).splitlines()[1:]
    assert len(lines) == 3  # d and e: a state dict and a safetensors file are weights files
    assert "row 1: column 'uri'" in lines[0] and "looks like a torch.save checkpoint (state dict), not an ONNX model: use source 'checkpoint'" in lines[0]
    assert "row 2: column 'uri'" in lines[1] and "use source 'safetensors'" in lines[1]
    assert "row 3: column 'uri'" in lines[2] and "empty.pt is empty (0 bytes)" in lines[2]
    torch.onnx.export(torch.nn.Conv2d(1, 2, 3), (torch.randn(1, 1, 8, 8),), tmp_path / "m.onnx", dynamo=False)
    with pytest.raises(CatalogError, match=r"row 1: column 'weights_file': .* looks like an ONNX model; weights_file takes a state dict"):
        read_catalog(write(tmp_path / "w.csv", "model_id,source,uri,weights_file\na,timm,resnet18,m.onnx\n"))
