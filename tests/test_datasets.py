"""Dataset adapters: every layout reads back what `featbench.synthetic` wrote; clear one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from featbench.datasets import dataset_info, list_datasets, load_dataset, locate_dataset_dir
from featbench.errors import FeatbenchError
from featbench.synthetic import class_image, class_name, make_dataset

COOP = ["imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101", "fgvc_aircraft",
        "sun397", "dtd", "eurosat", "ucf101"]
VARIANTS = ["imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r"]
SELECT = ["itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.",
          "a {} in a video game.", "art of the {}.", "a photo of the small {}.", "a photo of a {}."]
# REFERENCE.md's table: name -> (folder, split file or None, template or None for the ImageNet set)
TABLE = {
    "imagenet": ("imagenet", None, None),
    "caltech101": ("caltech-101", "split_zhou_Caltech101.json", "a photo of a {}."),
    "oxford_pets": ("oxford_pets", "split_zhou_OxfordPets.json", "a photo of a {}, a type of pet."),
    "stanford_cars": ("stanford_cars", "split_zhou_StanfordCars.json", "a photo of a {}."),
    "oxford_flowers": ("oxford_flowers", "split_zhou_OxfordFlowers.json", "a photo of a {}, a type of flower."),
    "food101": ("food-101", "split_zhou_Food101.json", "a photo of {}, a type of food."),
    "fgvc_aircraft": ("fgvc_aircraft", "images_variant_{split}.txt", "a photo of a {}, a type of aircraft."),
    "sun397": ("sun397", "split_zhou_SUN397.json", "a photo of a {}."),
    "dtd": ("dtd", "split_zhou_DescribableTextures.json", "{} texture."),
    "eurosat": ("eurosat", "split_zhou_EuroSAT.json", "a centered satellite photo of {}."),
    "ucf101": ("ucf101", "split_zhou_UCF101.json", "a photo of a person doing {}."),
    "imagenetv2": ("imagenetv2", None, None),
    "imagenet_sketch": ("imagenet-sketch", None, None),
    "imagenet_a": ("imagenet-adversarial", None, None),
    "imagenet_r": ("imagenet-rendition", None, None),
}
PER_SPLIT = (3, 2, 1)
N = 4


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """One CoOp DATA root holding every CoOp layout and variant (4 classes, 3/2/1 images per class)."""
    root = tmp_path_factory.mktemp("DATA")
    for name in COOP + VARIANTS:
        make_dataset(root, name, n_classes=N, per_split=PER_SPLIT)
    return root


# ----------------------------------------------------------------------------------------------------
# catalog
# ----------------------------------------------------------------------------------------------------
def test_list_datasets():
    names = list_datasets()
    assert names == COOP + VARIANTS + ["objectnet", "folder", "csv"]  # ObjectNet: tests/test_objectnet.py
    assert list_datasets("coop") == COOP
    assert list_datasets("imagenet_variant") == VARIANTS + ["objectnet"]
    with pytest.raises(FeatbenchError, match="group"):
        list_datasets("nope")


@pytest.mark.parametrize("name", list(TABLE))
def test_catalog_matches_reference(name):
    folder, split_file, template = TABLE[name]
    info = dataset_info(name)
    assert info.name == name and info.folder == folder and info["folder"] == folder
    assert info.split_file == split_file
    if template is None:
        assert list(info.templates) == SELECT
    else:
        assert list(info.templates) == [template] and info.template == template
    assert info.has_val == (name in COOP and name != "imagenet")
    assert info.splits == (("train", "val", "test") if info.has_val else ("train", "test") if name == "imagenet" else ("test",))
    assert info.to_dict()["has_val"] == info.has_val
    if name in VARIANTS:
        assert info.class_space == "imagenet"


def test_custom_entries_and_aliases():
    assert list(dataset_info("folder").templates) == SELECT  # a generic ensemble, not one template
    assert list(dataset_info("csv").templates) == SELECT
    assert dataset_info("Caltech-101").name == "caltech101"
    assert dataset_info("imagenet-sketch").name == "imagenet_sketch"
    assert dataset_info("FLOWERS102").name == "oxford_flowers"


def test_unknown_name_lists_valid_names(tmp_path):
    with pytest.raises(FeatbenchError) as exc:
        load_dataset("cifar10", tmp_path)
    msg = str(exc.value)
    assert "cifar10" in msg and "\n" not in msg
    for name in list_datasets():
        assert name in msg


# ----------------------------------------------------------------------------------------------------
# CoOp layouts read back
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", COOP + VARIANTS)
def test_reads_back_synthetic(data_root, name):
    ds = load_dataset(name, data_root)
    info = dataset_info(name)
    assert ds.name == name and ds.info == info
    assert ds.root == data_root / info.folder
    assert ds.templates == list(info.templates)
    assert list(ds.splits) == list(info.splits)
    assert len(ds.classnames) == len(ds.class_ids) == N
    sparse = name in ("imagenet_a", "imagenet_r")
    expected = [class_name(2 * y + 1 if sparse else y).replace("_", " ") for y in range(N)]
    assert ds.classnames == expected
    counts = dict(zip(("train", "val", "test"), PER_SPLIT))
    for split, items in ds.splits.items():
        assert len(items) == N * counts[split]
        assert sorted({y for _, y in items}) == list(range(N))
        for rel, _ in items:
            assert not Path(rel).is_absolute() and "/./" not in rel
            assert ds.abspath(rel).is_file()
    assert ds.paths(next(iter(ds.splits)))[0] == next(iter(ds.splits.values()))[0][0]
    assert ds.counts() == {s: len(v) for s, v in ds.splits.items()}


def test_split_json_order_and_labels(data_root):
    ds = load_dataset("caltech101", data_root)
    raw = json.loads((data_root / "caltech-101" / "split_zhou_Caltech101.json").read_text())
    for split in ("train", "val", "test"):
        assert ds.splits[split] == [(f"101_ObjectCategories/{p}", y) for p, y, _ in raw[split]]
    cars = load_dataset("stanford_cars", data_root)  # image_dir "." -> paths relative to the dataset folder
    assert cars.splits["train"][0][0].startswith("cars_train/")
    assert cars.splits["test"][0][0].startswith("cars_test/")


def test_imagenet_labels_follow_sorted_wnids(data_root):
    ds = load_dataset("imagenet", data_root)
    assert "val" not in ds.splits
    assert ds.class_ids == sorted(ds.class_ids)
    for rel, y in ds.splits["train"] + ds.splits["test"]:
        assert rel.split("/")[2] == ds.class_ids[y]
    assert all(rel.startswith("images/val/") for rel, _ in ds.splits["test"])
    # a variant's wnids map onto ImageNet's classes
    ia = load_dataset("imagenet_a", data_root)
    assert ia.class_ids == sorted(ia.class_ids)
    assert all(rel.split("/")[1] == ia.class_ids[y] for rel, y in ia.splits["test"])


def test_imagenetv2_int_labels(tmp_path):
    root = make_dataset(tmp_path, "imagenetv2", n_classes=12, per_split=(0, 0, 1))
    ds = load_dataset("imagenetv2", root)
    assert [y for _, y in ds.splits["test"]] == list(range(12))  # 10, 11 after 9, not after 1
    assert all(rel.split("/")[1] == str(y) for rel, y in ds.splits["test"])
    assert ds.classnames[11] == class_name(11).replace("_", " ")


def test_fgvc_labels_from_variants(data_root):
    ds = load_dataset("fgvc_aircraft", data_root)
    lines = (data_root / "fgvc_aircraft" / "images_variant_val.txt").read_text().split("\n")
    for (rel, y), line in zip(ds.splits["val"], lines):
        image_id, variant = line.split(" ", 1)
        assert rel == f"images/{image_id}.jpg" and ds.classnames[y] == variant


# ----------------------------------------------------------------------------------------------------
# root detection, class names, templates
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["caltech101", "imagenet", "fgvc_aircraft", "stanford_cars", "imagenet_r"])
def test_root_detection_both_ways(data_root, name):
    a = load_dataset(name, data_root)
    b = load_dataset(name, data_root / dataset_info(name).folder)
    assert a.root == b.root and a.splits == b.splits and a.classnames == b.classnames


def test_root_detection_renamed_dataset_folder(data_root, tmp_path):
    shutil.copytree(data_root / "dtd", tmp_path / "my_dtd")
    ds = load_dataset("dtd", tmp_path / "my_dtd")  # recognised by its split file
    assert ds.root == tmp_path / "my_dtd" and len(ds.splits["train"]) == N * PER_SPLIT[0]
    with pytest.raises(FeatbenchError) as exc:
        locate_dataset_dir("eurosat", tmp_path)
    assert str(tmp_path / "eurosat") in str(exc.value) and "--root" in str(exc.value)


def test_classname_styles(data_root):
    clean = load_dataset("oxford_pets", data_root)
    raw = load_dataset("oxford_pets", data_root, classname_style="raw")
    assert raw.classnames == [class_name(y) for y in range(N)]
    assert clean.classnames == [n.replace("_", " ") for n in raw.classnames]
    assert clean.class_ids == raw.class_ids == raw.classnames
    with pytest.raises(FeatbenchError, match="classname_style"):
        load_dataset("oxford_pets", data_root, classname_style="fancy")


def test_template_override(data_root):
    ds = load_dataset("dtd", data_root, templates=["a close-up of {}.", "{}"])
    assert ds.templates == ["a close-up of {}.", "{}"]
    assert load_dataset("dtd", data_root, templates="x {} y").templates == ["x {} y"]
    with pytest.raises(FeatbenchError, match="has no"):
        load_dataset("dtd", data_root, templates=["no placeholder"])
    with pytest.raises(FeatbenchError, match="at least one"):
        load_dataset("dtd", data_root, templates=[])


# ----------------------------------------------------------------------------------------------------
# errors name the file and the fix
# ----------------------------------------------------------------------------------------------------
def _one_line(exc) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_missing_root(tmp_path):
    with pytest.raises(FeatbenchError) as exc:
        load_dataset("caltech101", tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in _one_line(exc) and "--root" in str(exc.value)


def test_missing_dataset_folder(tmp_path):
    with pytest.raises(FeatbenchError) as exc:
        load_dataset("sun397", tmp_path)
    assert str(tmp_path / "sun397") in _one_line(exc)


def test_missing_split_file(data_root, tmp_path):
    shutil.copytree(data_root / "caltech-101", tmp_path / "caltech-101")
    split = tmp_path / "caltech-101" / "split_zhou_Caltech101.json"
    split.unlink()
    for root in (tmp_path, tmp_path / "caltech-101"):
        with pytest.raises(FeatbenchError) as exc:
            load_dataset("caltech101", root)
        msg = _one_line(exc)
        assert str(split) in msg and "CoOp" in msg and "--root" in msg


@pytest.mark.parametrize(
    "content, needle",
    [("{not json", "not valid JSON"), ('["a"]', "JSON object"), ('{"train": [["a.jpg", "0", "x"]]}', "train[0]"),
     ('{"training": []}', "unknown split"), ('{"train": [["a.jpg", 1, "x"]]}', "never occur"),
     ('{"train": [["a.jpg", 0, "x"], ["b.jpg", 0, "y"]]}', "named both")],
)
def test_malformed_split_json(tmp_path, content, needle):
    (tmp_path / "food-101").mkdir()
    path = tmp_path / "food-101" / "split_zhou_Food101.json"
    path.write_text(content)
    with pytest.raises(FeatbenchError) as exc:
        load_dataset("food101", tmp_path)
    assert str(path) in _one_line(exc) and needle in str(exc.value)


def test_missing_imagenet_pieces(data_root, tmp_path):
    shutil.copytree(data_root / "imagenet", tmp_path / "imagenet")
    (tmp_path / "imagenet" / "classnames.txt").unlink()
    with pytest.raises(FeatbenchError) as exc:
        load_dataset("imagenet", tmp_path)
    assert str(tmp_path / "imagenet" / "classnames.txt") in _one_line(exc)
    shutil.rmtree(tmp_path / "imagenet" / "images" / "val")
    with pytest.raises(FeatbenchError) as exc:
        load_dataset("imagenet", tmp_path / "imagenet")
    assert str(tmp_path / "imagenet" / "images" / "val") in _one_line(exc)


def test_classnames_missing_a_wnid(data_root, tmp_path):
    shutil.copytree(data_root / "imagenet-sketch", tmp_path / "imagenet-sketch")
    cpath = tmp_path / "imagenet-sketch" / "classnames.txt"
    cpath.write_text("\n".join(cpath.read_text().splitlines()[1:]) + "\n")
    with pytest.raises(FeatbenchError) as exc:
        load_dataset("imagenet_sketch", tmp_path)
    assert str(cpath) in _one_line(exc)


def test_missing_fgvc_files(data_root, tmp_path):
    shutil.copytree(data_root / "fgvc_aircraft", tmp_path / "fgvc_aircraft")
    (tmp_path / "fgvc_aircraft" / "images_variant_val.txt").unlink()
    with pytest.raises(FeatbenchError) as exc:
        load_dataset("fgvc_aircraft", tmp_path)
    assert str(tmp_path / "fgvc_aircraft" / "images_variant_val.txt") in _one_line(exc)
    (tmp_path / "fgvc_aircraft" / "images_variant_test.txt").write_text("1234 not a variant\n")
    (tmp_path / "fgvc_aircraft" / "images_variant_val.txt").write_text("")
    with pytest.raises(FeatbenchError) as exc:
        load_dataset("fgvc_aircraft", tmp_path)
    assert "images_variant_test.txt line 1" in _one_line(exc)
    (tmp_path / "fgvc_aircraft" / "variants.txt").unlink()
    with pytest.raises(FeatbenchError) as exc:
        load_dataset("fgvc_aircraft", tmp_path)
    assert str(tmp_path / "fgvc_aircraft" / "variants.txt") in _one_line(exc)


def test_manifest_only_for_csv(data_root):
    with pytest.raises(FeatbenchError, match="--manifest"):
        load_dataset("dtd", data_root, manifest="m.csv")


# ----------------------------------------------------------------------------------------------------
# folder
# ----------------------------------------------------------------------------------------------------
def test_folder_with_split_folders(tmp_path):
    root = make_dataset(tmp_path, "folder", n_classes=3, per_split=(2, 1, 1))
    (root / "train" / "circle_on_red" / ".hidden.jpg").write_bytes(b"x")
    (root / "train" / "circle_on_red" / "notes.txt").write_text("x")
    class_image(0, 9).save(root / "train" / "circle_on_red" / "UPPER.PNG")
    (root / "test" / "extra_class").mkdir()  # a class present in one split only
    class_image(3, 0).save(root / "test" / "extra_class" / "a.webp")
    ds = load_dataset("folder", root)
    assert ds.root == root and ds.templates == SELECT
    assert ds.class_ids == sorted(ds.class_ids) and "extra_class" in ds.class_ids
    assert ds.classnames == [c.replace("_", " ") for c in ds.class_ids]
    assert len(ds.splits["train"]) == 3 * 2 + 1 and ("train/circle_on_red/UPPER.PNG", 0) in ds.splits["train"]
    assert len(ds.splits["val"]) == 3 and len(ds.splits["test"]) == 4
    for rel, y in ds.splits["train"]:
        assert rel.split("/")[1] == ds.class_ids[y] and ds.abspath(rel).is_file()


def test_folder_without_split_folders_is_split_deterministically(tmp_path):
    for y, name in enumerate(["b_cls", "a_cls"]):
        for i in range(10):
            sub = "nested/" if i % 2 else ""
            path = tmp_path / name / f"{sub}{i:02d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            class_image(y, i, 16).save(path)
    ds = load_dataset("folder", tmp_path)
    assert ds.class_ids == ["a_cls", "b_cls"]
    assert {s: len(v) for s, v in ds.splits.items()} == {"train": 10, "val": 4, "test": 6}
    assert ds == load_dataset("folder", tmp_path)
    everything = sorted(p for v in ds.splits.values() for p, _ in v)
    assert len(everything) == len(set(everything)) == 20
    for split in ds.splits.values():
        assert split == sorted(split, key=lambda it: (it[1], it[0]))  # class, then path order


def test_folder_errors(tmp_path):
    with pytest.raises(FeatbenchError, match="no class folders"):
        load_dataset("folder", tmp_path)
    (tmp_path / "train" / "cat").mkdir(parents=True)
    (tmp_path / "dog").mkdir()
    with pytest.raises(FeatbenchError, match="mixes split folders"):
        load_dataset("folder", tmp_path)
    (tmp_path / "dog").rmdir()
    with pytest.raises(FeatbenchError, match="no images"):
        load_dataset("folder", tmp_path)


# ----------------------------------------------------------------------------------------------------
# csv
# ----------------------------------------------------------------------------------------------------
def test_csv_reads_back(tmp_path):
    root = make_dataset(tmp_path, "csv", n_classes=3, per_split=(2, 1, 1))
    ds = load_dataset("csv", root)
    assert ds.root == root and ds.class_ids == sorted(class_name(y) for y in range(3))
    rows = (root / "manifest.csv").read_text().splitlines()[1:]
    assert [p for s in ("train", "val", "test") for p, _ in ds.splits[s]] == [r.split(",")[0] for r in rows]
    for rel, y in ds.splits["train"]:
        assert ds.abspath(rel).is_file() and rel.split("/")[1] == ds.class_ids[y]
    # manifest given explicitly, relative to root; root defaults to the manifest's folder
    assert load_dataset("csv", root, manifest="manifest.csv").splits == ds.splits
    assert load_dataset("csv", None, manifest=root / "manifest.csv").root == root


def test_csv_int_labels_classname_column_and_auto_split(tmp_path):
    img = tmp_path / "x.jpg"
    class_image(0, 0, 16).save(img)
    lines = ["Path,Label,classname", f"{img},0,"] + [
        f"im{i}.jpg,{i % 3},{'zebra_fish' if i % 3 == 1 else ''}" for i in range(1, 30)
    ]
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    ds = load_dataset("csv", tmp_path, manifest=tmp_path / "m.csv", classname_style="raw")
    assert ds.classnames == ["class_0", "zebra_fish", "class_2"]
    assert {s: len(v) for s, v in ds.splits.items()} == {"train": 15, "val": 6, "test": 9}
    assert ds.abspath(str(img)) == img  # absolute paths pass through


def test_json_manifest(tmp_path):
    (tmp_path / "m.json").write_text(json.dumps({"train": [["a.jpg", 0, "cat"]], "test": [["b.jpg", 1, "dog"]]}))
    ds = load_dataset("csv", tmp_path, manifest="m.json")
    assert ds.classnames == ["cat", "dog"] and list(ds.splits) == ["train", "test"]


@pytest.mark.parametrize(
    "content, needle",
    [("", "is empty"), ("file,class\na.jpg,cat\n", "lacks"), ("path,label\n", "no rows"),
     ("path,label,split\na.jpg,cat,holdout\n", "line 2"), ("path,label\na.jpg,cat\na.jpg,dog\n", "listed twice"),
     ("path,label\na.jpg,-1\n", "0..C-1")],
)
def test_malformed_manifest(tmp_path, content, needle):
    path = tmp_path / "manifest.csv"
    path.write_text(content)
    with pytest.raises(FeatbenchError) as exc:
        load_dataset("csv", tmp_path)
    assert str(path) in _one_line(exc) and needle in str(exc.value)


def test_missing_manifest(tmp_path):
    with pytest.raises(FeatbenchError) as exc:
        load_dataset("csv", tmp_path)
    assert str(tmp_path / "manifest.csv") in _one_line(exc)
    with pytest.raises(FeatbenchError) as exc:
        load_dataset("csv", tmp_path, manifest="other.csv")
    assert "other.csv" in _one_line(exc)
