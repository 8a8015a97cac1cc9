"""Issue 18: photo-like variants in the featurization, `p8 evaluate`, and `p8 predict`'s unsure.

The variants' pixels come from p8lib.augment; here the pipeline's rows are checked against the
network run directly on them, the scores of `p8 evaluate` against `p8 predict --json`'s own
answers scored by hand.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from helpers import p8

from p8lib import augment


def _fruit_on_white(colour: tuple[int, int, int], size: int = 100) -> np.ndarray:
    image = np.full((size, size, 3), 255, np.uint8)
    yy, xx = np.mgrid[:size, :size]
    image[(yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2] = colour
    return image


def test_variants_put_the_fruit_on_other_backgrounds() -> None:
    red = _fruit_on_white((200, 30, 30))
    first = augment.variants(red, 6, size=224)
    assert len(first) == 6 and all(v.shape == (224, 224, 3) and v.dtype == np.uint8 for v in first)
    # The same image gives the same variants; another image, or another variant, others.
    again = augment.variants(red, 6, size=224)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[0], first[1])
    assert not np.array_equal(augment.variants(_fruit_on_white((30, 200, 30)), 1)[0], first[0])
    assert augment.variants(red, 0) == []
    for v in first:
        pixels = v.reshape(-1, 3).astype(int)
        reddish = (pixels[:, 0] > pixels[:, 1] + 60) & (pixels[:, 0] > pixels[:, 2] + 60)
        white = (pixels > 235).all(axis=1)
        assert reddish.mean() > 0.02  # the fruit is there
        assert white.mean() < 0.5  # the white background is not


def test_cutout_keeps_the_fruit_and_drops_the_white() -> None:
    fruit = augment.cutout(_fruit_on_white((40, 160, 40)))
    alpha = np.asarray(fruit.getchannel("A"))
    # Cropped to the disc (diameter 2/3 of 100 px, a little shaved), opaque inside, clear
    # in the corners.
    assert 55 <= fruit.size[0] <= 70 and 55 <= fruit.size[1] <= 70
    assert alpha[fruit.size[1] // 2, fruit.size[0] // 2] == 255
    assert alpha[0, 0] == 0 and alpha[-1, -1] == 0
    blank = augment.cutout(np.full((50, 50, 3), 255, np.uint8))
    assert blank.size == (50, 50)  # nothing but white: the whole frame is kept


def test_colour_bins_count_the_fruits_pixels_not_the_white() -> None:
    """The colour discriminant's input, from p8 run's histogram, against the pixels counted
    directly: a red disc on white is all red; white pixels count for nothing."""
    from PIL import Image

    from p8lib.featurize import color_histogram
    from p8lib.photo import colour_bins

    image = _fruit_on_white((200, 30, 30))
    bins = colour_bins(color_histogram(image))
    assert bins.shape == (35,) and np.isclose((bins**2).sum(), 1.0)
    hue, sat, val = (
        np.asarray(Image.fromarray(np.array([[[200, 30, 30]]], np.uint8)).convert("HSV"))
        .reshape(3)
        .astype(int)
    )
    expected = np.zeros(35)
    expected[(hue * 16 >> 8) * 2 + (sat >= 160)] = 1.0
    np.testing.assert_allclose(bins, expected, atol=1e-6)
    # Half green, on white: two bins of equal weight (square roots of one half).
    two = np.full((100, 100, 3), 255, np.uint8)
    two[20:80, 10:50], two[20:80, 50:90] = (200, 30, 30), (30, 160, 30)
    b = colour_bins(color_histogram(two))
    assert np.sort(b)[-2:] == pytest.approx([0.5**0.5, 0.5**0.5], abs=0.02)


def test_cell_colours_read_the_square_around_each_cell() -> None:
    """Left half red, right half green, 224 px, a 7×7 map: the inner 5×5 cells' squares (the
    cell and half of each neighbour, 96 px) are red on the left, green on the right."""
    from p8lib.featurize import color_histogram
    from p8lib.photo import cell_colours

    image = np.zeros((224, 224, 3), np.uint8)
    image[:, :112], image[:, 112:] = (200, 30, 30), (30, 160, 30)
    cells = cell_colours(image, 7).reshape(5, 5, -1)
    red, green = color_histogram(image[:, :112]), color_histogram(image[:, 112:])
    np.testing.assert_allclose(cells[:, 0], np.broadcast_to(red, (5, red.size)))  # x 0-96
    np.testing.assert_allclose(cells[:, 4], np.broadcast_to(green, (5, red.size)))  # 128-224
    middle = cells[2, 2]  # x 64-160: half of each
    assert (middle**2)[red > 0].sum() == pytest.approx(0.5, abs=0.02)
    np.testing.assert_allclose(cells[0, 2], middle)  # rows do not matter here


def test_the_colour_discriminant_adds_its_margins_cell_by_cell() -> None:
    """A photo model whose features say nothing (zero coefficients) and whose colour
    discriminant knows red (class 0) from green (class 1): a photo red on its left three fifths
    leans to class 0 by the cells' average; weight 0 leaves it undecided."""
    from p8lib import photo
    from p8lib.featurize import color_histogram

    red, green = np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8)
    red[...], green[...] = (200, 30, 30), (30, 160, 30)
    hues = photo.colour_bins(np.stack([color_histogram(red), color_histogram(green)]))
    model = photo.PhotoModel(
        coefficients=np.zeros((2, 1280)),
        intercepts=np.zeros(2),
        gate_coefficients=np.zeros((2, 1280)),
        gate_intercepts=np.zeros(2),
        colour_coefficients=4 * hues,  # margin 4 for its own colour, 0 for the other
        colour_intercepts=np.zeros(2),
    )
    image = np.zeros((224, 224, 3), np.uint8)
    image[:, :134], image[:, 134:] = (200, 30, 30), (30, 160, 30)
    around = photo.cell_colours(image, 7)[None]
    maps = np.ones((1, 7, 7, 1280))
    bins = photo.colour_bins(around[0])  # each cell: how red, how green
    margins = photo.COLOUR_WEIGHT * bins @ (4 * hues).T
    expected = photo.softmax(margins).mean(axis=0)
    got = model.probabilities(maps, around)[0]
    np.testing.assert_allclose(got, expected)
    assert got[0] > 0.55 > 0.45 > got[1]
    even = dataclasses.replace(model, colour_weight=0.0)
    np.testing.assert_allclose(even.probabilities(maps, around)[0], [0.5, 0.5])
    # Saved and read back, it answers the same.
    again = photo.PhotoModel.from_json(model.to_json())
    np.testing.assert_allclose(again.probabilities(maps, around), [got])
    assert again.record()["colour_weight"] == photo.COLOUR_WEIGHT


@pytest.fixture(scope="module")
def augmented(spark, sample_dir, tmp_path_factory):
    """Six sample images of three classes, with 2 variants of each."""
    from p8lib.pipeline import run

    root = tmp_path_factory.mktemp("augment")
    for folder in sorted(p for p in sample_dir.iterdir() if p.is_dir())[:3]:
        for image in sorted(folder.iterdir())[:2]:
            (root / "images" / folder.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(image, root / "images" / folder.name / image.name)
    result = run(images=str(root / "images"), output=str(root / "out"), augment=2, k=2)
    return root, result


def test_run_adds_the_variants_as_rows(augmented, sample_table, weights_path) -> None:
    from p8lib import engine
    from p8lib.featurize import color_histogram, load_image

    root, result = augmented
    table = pd.read_parquet(result.parquet.removeprefix("file://"))
    assert len(table) == 18 and sorted(table["variant"].value_counts().items()) == [
        (0, 6),
        (1, 6),
        (2, 6),
    ]
    manifest = json.loads((root / "out" / "manifest.json").read_text())
    assert manifest["counts"]["images"] == 6 and manifest["counts"]["featurized"] == 6
    assert manifest["augmentation"] == {"variants": 2, "descriptor": augment.DESCRIPTOR}
    # Variant 0 is the image itself: the features of the run without variants.
    plain = sample_table.assign(name=sample_table["path"].map(lambda p: Path(p).name))
    for _, row in table[table["variant"] == 0].iterrows():
        same = plain[plain["name"] == Path(row["path"]).name].iloc[0]
        np.testing.assert_allclose(row["features"], same["features"], atol=1e-4)
    # Variants 1 and 2: the network on augment.variants() of the image's pixels.
    digest = hashlib.sha256(weights_path.read_bytes()).hexdigest()
    network = engine.prepare(
        engine="openvino",
        precision="fp32",
        weights_path=weights_path,
        weights_sha256=digest,
        image_size=224,
    )
    net = engine.load(network, threads=1)
    path = table["path"].iloc[0]
    pixels = load_image(Path(path.removeprefix("file:")).read_bytes(), 224)
    expected = augment.variants(pixels, 2)
    reference = engine.embed(net, np.stack(expected))
    rows = table[table["path"] == path].sort_values("variant")
    np.testing.assert_allclose(np.stack(rows["features"])[1:], reference, atol=1e-4)
    colors = np.stack([color_histogram(v) for v in expected])
    np.testing.assert_allclose(np.stack(rows["color"])[1:], colors, atol=1e-6)
    assert rows["label"].nunique() == 1 and rows["error"].isna().all()


def test_incremental_run_keeps_the_variants(spark, augmented) -> None:
    from p8lib.pipeline import run

    root, first = augmented
    again = run(
        images=str(root / "images"), output=str(root / "out"), augment=2, k=2, mode="incremental"
    )
    assert again.manifest.counts.reused == 6 and again.featurized == 0
    table = pd.read_parquet(again.parquet.removeprefix("file://"))
    assert len(table) == 18 and set(table["variant"]) == {0, 1, 2}


def test_a_model_trained_on_variants_is_evaluated_on_images_only(spark, augmented) -> None:
    from p8lib.classify import train

    root, result = augmented
    model = train(features=result.output, model=str(root / "model"), test=result.output, k=2)
    assert model.train_rows == 6  # the regression: the images alone, the photo model: all 18
    assert model.evaluation.rows == 6  # the images alone
    info = json.loads((root / "model" / "model.json").read_text())
    assert info["augmentation"]["variants"] == 2
    assert info["photo_model"]["file"] == "photo_model.json"
    assert (root / "model" / "photo_model.json").is_file()
    plain = train(
        features=result.output,
        model=str(root / "plain"),
        test=result.output,
        k=2,
        photo_model=False,
    )
    assert plain.train_rows == 18 and not (root / "plain" / "photo_model.json").exists()
    assert info["photo_model"]["colour_weight"] == 1.0  # the rows have colour histograms
    assert info["photo_model"]["shrinkage"] == 0.2
    assert info["photo_model"]["shrink_toward"] == "identity"
    assert info["photo_model"]["fruit_pull"] == 0.7
    # Without them (--no-color), the photo model reads the features alone.
    train(features=result.output, model=str(root / "grey"), test=result.output, k=2, color=False)
    grey = json.loads((root / "grey" / "model.json").read_text())["photo_model"]
    assert grey["colour_weight"] is None
    assert "colour_coefficients" not in json.loads((root / "grey" / "photo_model.json").read_text())


class _ShrunkToDiagonal:
    """scikit-learn covariance estimator: the empirical covariance shrunk toward its diagonal."""

    def __init__(self, shrinkage: float) -> None:
        self.shrinkage = shrinkage

    def fit(self, x: np.ndarray) -> _ShrunkToDiagonal:
        c = np.cov(x, rowvar=False, bias=True)
        self.covariance_ = (1 - self.shrinkage) * c + self.shrinkage * np.diag(np.diag(c))
        return self


def _margins_with_means_pulled(
    reference: Any, x: np.ndarray, fruits: list[str], pull: float
) -> np.ndarray:
    """Margins of a fitted scikit-learn LDA (less each row's mean: what its softmax reads), its
    class means first moved ``pull`` of the way toward the mean of their fruit's class means
    (its covariance and priors unchanged)."""
    means = reference.means_
    centres = {f: means[[g == f for g in fruits]].mean(axis=0) for f in set(fruits)}
    pulled = (1 - pull) * means + pull * np.stack([centres[f] for f in fruits])
    coef = np.linalg.solve(reference.covariance_, pulled.T).T
    margins = x @ coef.T - 0.5 * np.sum(coef * pulled, axis=1) + np.log(reference.priors_)
    return margins - margins.mean(axis=1, keepdims=True)


def test_the_photo_discriminant_pulls_varieties_toward_their_fruit() -> None:
    """Three classes, two of one fruit: pulled ``p`` of the way toward their fruit's mean, the two
    varieties' coefficients differ (1 − p) times as much, all the way they are alike; the third
    class, alone of its fruit, keeps its own; groups that do not match the classes are refused."""
    from p8lib import photo

    rng = np.random.default_rng(1)
    centres = np.array([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0]])
    y = np.repeat([0, 1, 2], 50)
    part = photo.scatter(y, centres[y] + rng.normal(scale=0.1, size=(150, 3)), classes=3)
    groups = ["apple", "apple", "pear"]
    plain = photo.discriminant(part, shrinkage=0.1)
    for pull in (0.0, photo.FRUIT_PULL, 1.0):
        coef, _ = photo.discriminant(part, shrinkage=0.1, groups=groups, pull=pull)
        np.testing.assert_allclose(coef[0] - coef[1], (1 - pull) * (plain[0][0] - plain[0][1]))
        np.testing.assert_allclose(coef[2], plain[0][2])
        np.testing.assert_allclose(coef[0] + coef[1], plain[0][0] + plain[0][1])
    with pytest.raises(ValueError, match="2 groups for 3 classes"):
        photo.discriminant(part, shrinkage=0.1, groups=groups[:2], pull=0.5)


def test_photo_model_is_scikit_learns_discriminant_analysis(spark, augmented) -> None:
    """The three discriminants, fitted in one Spark pass, against scikit-learn's LDA on the same
    rows: the photo discriminant with scikit-learn's own shrinkage (toward the mean variance times
    the identity), its class means pulled toward their fruit's (two of the three classes are
    apples); the gate and the colour with the covariance shrunk toward its diagonal."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    from p8lib import photo
    from p8lib.predict import load_classifier

    root, result = augmented
    classifier = load_classifier(root / "model")
    assert classifier.photo is not None and classifier.photo.shrinkage == photo.PHOTO_SHRINKAGE
    assert classifier.photo.toward == "identity"
    assert classifier.photo.fruit_pull == photo.FRUIT_PULL > 0
    table = pd.read_parquet(result.parquet.removeprefix("file://"))
    x = np.sqrt(np.stack(table["features"]).astype(np.float64))
    x /= np.linalg.norm(x, axis=1, keepdims=True)  # square roots, each row of length 1
    assert classifier.photo.unit
    for target, coef, intercept, lda in (
        (
            table["label"],
            classifier.photo.coefficients,
            classifier.photo.intercepts,
            LinearDiscriminantAnalysis(solver="lsqr", shrinkage=photo.PHOTO_SHRINKAGE),
        ),
        (
            table["variant"] > 0,
            classifier.photo.gate_coefficients,
            classifier.photo.gate_intercepts,
            LinearDiscriminantAnalysis(
                solver="lsqr", covariance_estimator=_ShrunkToDiagonal(photo.SHRINKAGE)
            ),
        ),
    ):
        reference = lda.fit(x, target)
        if target.dtype == bool:
            assert list(reference.classes_) == [False, True]  # studio shot first, as ours
            expected = reference.predict_proba(x)
        else:
            assert list(reference.classes_) == sorted(classifier.labels)
            order = [classifier.labels.index(c) for c in reference.classes_]
            coef, intercept = coef[order], intercept[order]
            fruits = [photo.fruit_of(c) for c in reference.classes_]
            assert fruits == ["apple", "apple", "avocado"]
            plain = reference.decision_function(x)
            plain -= plain.mean(axis=1, keepdims=True)
            np.testing.assert_allclose(_margins_with_means_pulled(reference, x, fruits, 0), plain)
            expected = _margins_with_means_pulled(reference, x, fruits, photo.FRUIT_PULL)
            assert np.abs(expected - plain).max() > 1  # the pull matters here
            ours = x @ coef.T + intercept
            np.testing.assert_allclose(
                ours - ours.mean(axis=1, keepdims=True), expected, rtol=1e-6, atol=1e-6
            )
            continue
        ours = photo.softmax(x @ coef.T + intercept)
        np.testing.assert_allclose(ours, expected, atol=1e-6)
    # The colour discriminant: the same LDA on the reduced colour histograms of the rows.
    assert classifier.photo.colour and classifier.photo.colour_weight == photo.COLOUR_WEIGHT
    hues = photo.colour_bins(np.stack(table["color"]))
    reference = LinearDiscriminantAnalysis(
        solver="lsqr", covariance_estimator=_ShrunkToDiagonal(photo.SHRINKAGE)
    ).fit(hues, table["label"])
    order = [classifier.labels.index(c) for c in reference.classes_]
    assert classifier.photo.colour_coefficients is not None
    assert classifier.photo.colour_intercepts is not None
    coef = classifier.photo.colour_coefficients[order]
    ours = photo.softmax(hues @ coef.T + classifier.photo.colour_intercepts[order])
    np.testing.assert_allclose(ours, reference.predict_proba(hues), atol=1e-6)
    # The gate tells the training images from their variants.
    studio = classifier.photo.studio(np.stack(table["features"]))
    assert (studio[table["variant"] == 0] > 0.5).all() and (
        studio[table["variant"] > 0] < 0.5
    ).all()


def test_predict_mixes_the_photo_model_by_how_studio_like_a_photo_is(
    spark, augmented, weights_path
) -> None:
    """A studio image is answered by the regression, a variant by the photo model; the feature
    map network's average is the pooled network's features."""
    from p8lib import engine, photo
    from p8lib.featurize import color_histogram, load_image
    from p8lib.predict import load_classifier, predict_photos

    root, result = augmented
    classifier = load_classifier(root / "model")
    assert classifier.photo is not None
    digest = hashlib.sha256(weights_path.read_bytes()).hexdigest()
    nets = [
        engine.load(
            engine.prepare(
                engine="openvino",
                precision="fp32",
                weights_path=weights_path,
                weights_sha256=digest,
                image_size=224,
                pooled=pooled,
            ),
            threads=1,
        )
        for pooled in (True, False)
    ]
    image = sorted((root / "images").rglob("*.jpg"))[0]
    pixels = load_image(image.read_bytes(), 224)
    images = np.stack([pixels, *augment.variants(pixels, 2)])
    pooled, maps = (engine.embed(net, images) for net in nets)
    assert maps.shape == (3, 7, 7, 1280)
    np.testing.assert_allclose(maps.mean(axis=(1, 2)), pooled, atol=1e-4)
    colors = np.stack([color_histogram(im) for im in images])
    around = np.stack([photo.cell_colours(im, 7) for im in images])
    assert around.shape == (3, 25, 1024)
    mean = maps.mean(axis=(1, 2))
    regression = classifier.probabilities(mean, colors)
    photo_probs = classifier.photo.probabilities(maps, around)
    with pytest.raises(ValueError, match="colours around each cell"):
        classifier.photo.probabilities(maps)
    studio = classifier.photo.studio(mean)
    answer = classifier.answer(maps, colors, around)
    np.testing.assert_allclose(
        answer, studio[:, None] * regression + (1 - studio[:, None]) * photo_probs
    )
    assert studio[0] > 0.5 and (studio[1:] < 0.5).all()
    np.testing.assert_allclose(answer.sum(axis=1), 1.0)
    # p8 predict gives that answer for the image itself.
    (answered,) = predict_photos([image], model=root / "model", top=3)
    best = np.argsort(-answer[0], kind="stable")[:3]
    assert [label for label, _ in answered.top] == [classifier.labels[i] for i in best]
    np.testing.assert_allclose([p for _, p in answered.top], answer[0][best], atol=1e-4)


def test_a_broken_photo_model_is_said_in_one_line(augmented, sample_dir, tmp_path) -> None:
    root, _ = augmented
    photo_file = sorted(sample_dir.rglob("*.jpg"))[0]
    for broken, says in (
        ('{"coefficients": [[1.0', "photo_model.json is unreadable"),
        (
            '{"shrinkage": 0.3, "coefficients": [[1.0]], "intercepts": [0.0], '
            '"gate_coefficients": [[1.0]], "gate_intercepts": [0.0]}',
            "does not fit this model's 3 classes",
        ),
    ):
        model = tmp_path / "model"
        shutil.rmtree(model, ignore_errors=True)
        shutil.copytree(root / "model", model)
        (model / "photo_model.json").write_text(broken)
        result = p8("predict", str(photo_file), "--model", str(model))
        assert result.returncode == 1, result.stderr
        assert says in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_photo_model_saved_before_unit_length_keeps_its_answers() -> None:
    """photo_model.json files from before rows were scaled to length 1 read the square roots
    alone; newer ones (``unit_length``) scale each row, and say so when saved again."""
    from p8lib import photo

    rng = np.random.default_rng(0)
    coef, intercepts = rng.normal(size=(3, 4)), rng.normal(size=3)
    saved = {
        "shrinkage": 0.3,
        "coefficients": coef.tolist(),
        "intercepts": intercepts.tolist(),
        "gate_coefficients": rng.normal(size=(2, 4)).tolist(),
        "gate_intercepts": [0.0, 0.0],
    }
    x = rng.uniform(0, 4, size=(5, 4))
    roots = np.sqrt(x)
    for model, rows in (
        (photo.PhotoModel.from_json(json.dumps(saved)), roots),
        (
            photo.PhotoModel.from_json(json.dumps({**saved, "unit_length": True})),
            roots / np.linalg.norm(roots, axis=1, keepdims=True),
        ),
    ):
        expected = np.exp(rows @ coef.T + intercepts)
        np.testing.assert_allclose(
            model.probabilities(x), expected / expected.sum(axis=1, keepdims=True)
        )
        assert photo.PhotoModel.from_json(model.to_json()).unit == model.unit
    assert not photo.PhotoModel.from_json(json.dumps(saved)).unit
    # Saved before the photo discriminant was shrunk toward the identity and colour weighed 1:
    # read as fitted (toward the diagonal), its colour weight as saved.
    older = photo.PhotoModel.from_json(
        json.dumps(
            {
                **saved,
                "colour_coefficients": [[1.0] * photo.COLOUR_DIM] * 3,
                "colour_intercepts": [0.0] * 3,
                "colour_weight": 0.5,
            }
        )
    )
    assert older.toward == "diagonal" and older.colour_weight == 0.5 and older.fruit_pull == 0
    assert older.record()["shrink_toward"] == "diagonal" and older.record()["colour_weight"] == 0.5
    again = photo.PhotoModel.from_json(older.to_json())
    assert (again.toward, again.colour_weight, again.fruit_pull) == ("diagonal", 0.5, 0)
    assert not photo.PhotoModel.from_json(json.dumps(saved)).colour  # saved before colours


def _photo_folder(sample_dir: Path, root: Path) -> tuple[Path, dict[str, str]]:
    """Sample images under shop-like folder names (with a space), and each folder's class."""
    classes = {}
    for i, folder in enumerate(sorted(p for p in sample_dir.iterdir() if p.is_dir())[:4]):
        target = root / "photos" / f"Shop item {i}"
        target.mkdir(parents=True)
        for image in sorted(folder.iterdir())[:2]:
            shutil.copy(image, target / image.name)
        classes[target.name] = folder.name
    return root / "photos", classes


def test_evaluate_scores_what_predict_answers(sample_model, sample_dir, tmp_path) -> None:
    photos, classes = _photo_folder(sample_dir, tmp_path)
    fruits = {name: f"fruit-{name.split()[0].lower()}" for name in sample_model.info.labels}
    labels = {
        folder: {"fine": [cls], "coarse": fruits.get(cls, "unknown")}
        for folder, cls in classes.items()
    }
    (tmp_path / "labels.json").write_text(json.dumps(labels))
    (tmp_path / "coarse_map.json").write_text(json.dumps(fruits))  # found beside labels.json
    model = sample_model.model.removeprefix("file://")
    out = tmp_path / "evaluation"
    result = p8(
        "evaluate", "--model", model, "--images", str(photos), "--labels",
        str(tmp_path / "labels.json"), "--output", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "evaluation.json").read_text())
    assert (out / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The reference: p8 predict's answers for the same photos, scored here.
    files = sorted(str(p) for p in photos.rglob("*.jpg"))
    answers = [json.loads(line) for line in p8("predict", *files, "--model", model, "--json")
               .stdout.splitlines()]  # fmt: skip
    fine1 = fine3 = coarse1 = coarse3 = 0
    for path, answer in zip(files, answers, strict=True):
        truth = labels[Path(path).parent.name]
        top = [t["label"] for t in answer["top"]]
        fine1 += top[0] in truth["fine"]
        fine3 += any(t in truth["fine"] for t in top)
        coarse1 += fruits[top[0]] == truth["coarse"]
        coarse3 += truth["coarse"] in [fruits[t] for t in top]
    n = len(files)
    assert report["photos"] == n == 8
    assert report["fine_top1"] == pytest.approx(fine1 / n)
    assert report["fine_top3"] == pytest.approx(fine3 / n)
    assert report["coarse_top1"] == pytest.approx(coarse1 / n)
    assert report["coarse_top3"] == pytest.approx(coarse3 / n)
    assert [r["photos"] for r in report["per_folder"]] == [2, 2, 2, 2]
    curve = report["unsure_curve"]
    assert curve[0]["threshold"] == 0 and curve[0]["answered"] == 1
    assert [c["answered"] for c in curve] == sorted((c["answered"] for c in curve), reverse=True)
    assert f"{n} photos: fine top-1 {fine1 / n:.1%}" in result.stdout


def test_evaluate_reads_labels_in_any_case_and_a_single_fine_class(
    sample_model, sample_dir, tmp_path
) -> None:
    photos, classes = _photo_folder(sample_dir, tmp_path)
    model = sample_model.model.removeprefix("file://")
    tidy = {f: {"fine": [c], "coarse": c.split()[0].lower()} for f, c in classes.items()}
    loose = {f: {"fine": c, "coarse": f" {c.split()[0].upper()}  "} for f, c in classes.items()}
    reports = []
    for name, labels in (("tidy", tidy), ("loose", loose)):
        (tmp_path / f"{name}.json").write_text(json.dumps(labels))
        out = tmp_path / f"{name}-out"
        result = p8("evaluate", "--model", model, "--images", str(photos),
                    "--labels", str(tmp_path / f"{name}.json"), "--output", str(out))  # fmt: skip
        assert result.returncode == 0, result.stderr
        reports.append(json.loads((out / "evaluation.json").read_text()))
    keys = ("fine_top1", "fine_top3", "coarse_top1", "coarse_top3", "per_folder")
    assert [reports[0][k] for k in keys] == [reports[1][k] for k in keys]
    assert reports[0]["coarse_top1"] > 0 and reports[0]["fine_top1"] > 0
    (tmp_path / "map.json").write_text(json.dumps({"Apple 6": ["apple"]}))
    bad = p8("evaluate", "--model", model, "--images", str(photos),
             "--coarse-map", str(tmp_path / "map.json"))  # fmt: skip
    assert bad.returncode == 2 and "must map each class to a fruit's name" in bad.stderr


def test_evaluate_without_labels_uses_folder_names(sample_model, sample_dir, tmp_path) -> None:
    photos = tmp_path / "photos"
    for folder in sorted(p for p in sample_dir.iterdir() if p.is_dir())[:3]:
        shutil.copytree(folder, photos / folder.name)
    model = sample_model.model.removeprefix("file://")
    result = p8("evaluate", "--model", model, "--images", str(photos))
    assert result.returncode == 0, result.stderr
    files = sorted(str(p) for p in photos.rglob("*.jpg"))
    answers = [json.loads(x) for x in p8("predict", *files, "--model", model, "--json")
               .stdout.splitlines()]  # fmt: skip
    right = sum(
        a["top"][0]["label"] == Path(f).parent.name for f, a in zip(files, answers, strict=True)
    )
    assert f"{len(files)} photos: fine top-1 {right / len(files):.1%}" in result.stdout


def test_evaluate_names_what_the_labels_ask_that_the_model_cannot_answer(
    sample_model, sample_dir, tmp_path
) -> None:
    photos, classes = _photo_folder(sample_dir, tmp_path)
    model = sample_model.model.removeprefix("file://")
    from p8lib.predict import fruit_of

    labels = {f: {"fine": [c], "coarse": fruit_of(c)} for f, c in classes.items()}
    (tmp_path / "tidy.json").write_text(json.dumps(labels))
    first, second = sorted(labels)[:2]
    labels[first] = {"fine": ["Apple Braeburn 9"], "coarse": "apple"}  # a misspelt class
    labels[second] = {"fine": [], "coarse": "asparagus"}  # a product Fruits-360 lacks
    (tmp_path / "labels.json").write_text(json.dumps(labels))
    out = tmp_path / "evaluation"
    result = p8("evaluate", "--model", model, "--images", str(photos), "--labels",
                str(tmp_path / "labels.json"), "--output", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "evaluation.json").read_text())
    assert report["unknown_classes"] == ["Apple Braeburn 9"]
    assert report["unknown_fruits"] == ["asparagus"]
    notes = [line for line in result.stdout.splitlines() if "never right" in line]
    assert len(notes) == 2 and "Apple Braeburn 9" in notes[0] and "asparagus" in notes[1]
    tidy = p8("evaluate", "--model", model, "--images", str(photos),
              "--labels", str(tmp_path / "tidy.json"))  # fmt: skip
    assert tidy.returncode == 0 and "never right" not in tidy.stdout, tidy.stderr


def test_evaluate_refuses_bad_input_and_keeps_what_exists(
    sample_model, sample_dir, tmp_path
) -> None:
    photos, classes = _photo_folder(sample_dir, tmp_path)
    model = sample_model.model.removeprefix("file://")
    first = next(iter(classes))
    (tmp_path / "labels.json").write_text(json.dumps({first: {"fine": [], "coarse": "x"}}))
    missing = p8(
        "evaluate", "--model", model, "--images", str(photos), "--labels",
        str(tmp_path / "labels.json"),
    )  # fmt: skip
    assert missing.returncode == 2 and "has no entry" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    out = tmp_path / "kept"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    taken = p8("evaluate", "--model", model, "--images", str(photos), "--output", str(out))
    assert taken.returncode == 2 and "not an empty folder" in taken.stderr
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    nothing = p8("evaluate", "--model", model, "--images", str(tmp_path / "nowhere"))
    assert nothing.returncode == 2 and "not a folder" in nothing.stderr


def test_predict_says_when_it_is_unsure(sample_model, sample_dir) -> None:
    model = sample_model.model.removeprefix("file://")
    photos = [str(p) for p in sorted(sample_dir.rglob("*.jpg"))[:4]]
    sure = [json.loads(x) for x in p8("predict", *photos, "--model", model, "--json",
            "--unsure-below", "0").stdout.splitlines()]  # fmt: skip
    assert [line["unsure"] for line in sure] == [False] * 4
    # Below each photo's own top probability (but above the next one's): unsure exactly then.
    cut = sorted(line["top"][0]["probability"] for line in sure)[2]
    lines = p8("predict", *photos, "--model", model, "--unsure-below", str(cut)).stdout
    for line, answer in zip(lines.splitlines(), sure, strict=True):
        unsure = answer["top"][0]["probability"] < cut
        fruit_unsure = answer["fruit"]["probability"] < cut  # else the fruit is named
        assert ("unsure (perhaps " in line) == (unsure and fruit_unsure), line
        assert ("(variety unsure: " in line) == (unsure and not fruit_unsure), line
        assert answer["top"][0]["label"] in line
    bad = p8("predict", photos[0], "--model", model, "--unsure-below", "1.5")
    assert bad.returncode == 2 and "between 0 and 1" in bad.stderr
    # The fruit: its classes' sum, never below the top class alone. The first photos are
    # apples of two classes: between the two probabilities only the variety is unsure.
    assert all(a["fruit"]["probability"] >= a["top"][0]["probability"] for a in sure)
    first = sure[0]
    top_p, fruit_p = first["top"][0]["probability"], first["fruit"]["probability"]
    assert first["fruit"]["name"] == "apple" and fruit_p > top_p
    for cut, said in ((top_p + fruit_p) / 2, "apple"), (1.0, "unsure"):
        answer = p8("predict", photos[0], "--model", model, "--unsure-below", repr(cut))
        (line,) = answer.stdout.splitlines()
        assert line.startswith(f"{photos[0]}: {said} "), line
        assert f"{first['top'][0]['label']} {top_p:.1%}" in line
        if said == "apple":
            assert f"apple {fruit_p:.1%} (variety unsure: " in line


def test_predict_takes_a_folder_of_photos(sample_model, sample_dir, tmp_path) -> None:
    model = sample_model.model.removeprefix("file://")
    folder = tmp_path / "phone photos"
    for image in sorted(sample_dir.rglob("*.jpg"))[:3]:
        (folder / "day 1").mkdir(parents=True, exist_ok=True)
        shutil.copy(image, folder / "day 1" / image.name)
    shutil.copy(image, folder / "IMG 0001.JPG")
    (folder / "notes.txt").write_text("not a photo")
    (folder / ".hidden.jpg").write_bytes(b"")
    (tmp_path / "empty").mkdir()
    files = sorted(str(p) for p in folder.rglob("*") if p.suffix in (".jpg", ".JPG"))
    files = [f for f in files if not Path(f).name.startswith(".")]
    one = p8("predict", str(folder), "--model", model, "--json")
    each = p8("predict", *files, "--model", model, "--json")
    assert one.returncode == 0 and len(files) == 4, one.stderr
    assert one.stdout == each.stdout  # the folder's photos, in the order of their paths
    empty = p8("predict", str(tmp_path / "empty"), files[0], "--model", model)
    assert empty.returncode == 2 and "no image files under the folder" in empty.stderr
    assert empty.stdout == ""


def test_a_class_fruit_is_the_measuring_sets_and_probabilities_add_up_by_fruit(
    fruits_dir: Path,
) -> None:
    from p8lib.predict import Classifier, fruit_of

    # The reference: the outside photos' coarse map, every Fruits-360 class's fruit.
    coarse = json.loads((fruits_dir.parent / "outside-photos" / "coarse_map.json").read_text())
    assert {label: fruit_of(label) for label in coarse} == coarse
    assert {fruit_of(d.name) for d in (fruits_dir / "Test").iterdir()} <= set(coarse.values())
    labels = sorted(coarse)
    none = np.zeros(0)
    model = Classifier(labels, none, none, None, np.zeros((len(labels), 0)), np.zeros(len(labels)))
    probs = np.random.default_rng(0).dirichlet(np.full(len(labels), 0.05), size=50)
    for row, (name, p) in zip(probs, model.fruits(probs), strict=True):
        sums = pd.Series(row).groupby([coarse[x] for x in labels]).sum()
        assert name == sums.idxmax() and p == pytest.approx(sums.max())
    # A photo split between two apples and a banana: the apple, though the banana comes first.
    split = np.array([[0.3 if x in ("Apple 6", "Apple Red 1") else 0.0 for x in labels]])
    split[0, labels.index("Banana 1")] = 0.4
    assert model.ranked(split, 1)[0][0][0] == "Banana 1"
    assert model.fruits(split)[0] == ("apple", pytest.approx(0.6))


def test_an_iphones_heic_photo_is_answered_as_the_same_photo_in_jpeg(
    sample_model, sample_dir, tmp_path
) -> None:
    """HEIC encoded by libheif (x265, through pillow-heif); p8 reads it with no set-up."""
    from PIL import Image
    from pillow_heif import register_heif_opener

    register_heif_opener()  # for saving here; p8 runs in its own process
    model = sample_model.model.removeprefix("file://")
    phone = tmp_path / "Camera Roll" / "Apple"
    phone.mkdir(parents=True)
    jpegs = [str(p) for p in sorted(sample_dir.rglob("*.jpg"))[::9][:3]]
    for i, jpeg in enumerate(jpegs):
        Image.open(jpeg).save(phone / f"IMG_{i:04d}.HEIC", format="HEIF", quality=95)
    heics = [str(p) for p in sorted(phone.iterdir())]
    answers = [json.loads(x) for x in p8("predict", *jpegs, *heics, "--model", model, "--json")
               .stdout.splitlines()]  # fmt: skip
    assert len(answers) == 6 and not any("error" in a for a in answers)
    for as_jpeg, as_heic in zip(answers[:3], answers[3:], strict=True):
        assert as_heic["top"][0]["label"] == as_jpeg["top"][0]["label"]
        assert as_heic["top"][0]["probability"] == pytest.approx(
            as_jpeg["top"][0]["probability"], abs=0.1
        )
    result = p8("evaluate", "--model", model, "--images", str(phone.parent))
    assert result.returncode == 0, result.stderr
    assert "3 photos: fine top-1" in result.stdout


def test_augment_is_checked_and_planned(sample_dir, tmp_path) -> None:
    out = str(tmp_path / "out")
    plan = p8("run", "--images", str(sample_dir), "--output", out, "--dry-run", "--augment", "3")
    assert plan.returncode == 0, plan.stderr
    assert "3 variants of each image" in plan.stdout
    plain = p8("run", "--images", str(sample_dir), "--output", out, "--dry-run")
    assert "variants" not in plain.stdout
    for bad in ("21", "-1"):
        refused = p8("run", "--images", str(sample_dir), "--output", out, "--augment", bad)
        assert refused.returncode == 2 and "--augment must be between 0 and 20" in refused.stderr
    assert not (tmp_path / "out").exists()
