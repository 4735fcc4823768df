"""Catalogs: CSV or YAML, validated before any work, with the row, the column and what is allowed."""

import pytest

from ops.catalog import CatalogError, read_catalog
from ops.timm_catalog import datasets_of_tag, timm_catalog_rows


def write(path, text):
    path.write_text(text)
    return path


def test_csv_rows_become_entries_with_meta_and_extra_columns(tmp_path):
    (tmp_path / "a.pt").write_bytes(b"")
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
