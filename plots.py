"""The charts: training curves and the confusion matrix, drawn with matplotlib.

``matplotlib.figure.Figure`` is used directly, not pyplot: no GUI backend, no global state,
so the charts draw the same on a headless server as on a laptop.
"""
import io
from pathlib import Path

from matplotlib.figure import Figure

from atomic import write_atomic


def _save(figure: Figure, path: str | Path) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    write_atomic(path, lambda f: f.write(buffer.getbuffer()))


def training_curves(history: list[dict], path: str | Path) -> None:
    """Loss and accuracy per epoch, training and validation, with the best epoch marked."""
    epochs = [row["epoch"] for row in history]
    has_val = history[0]["val_accuracy"] is not None
    figure = Figure(figsize=(10, 4), layout="constrained")
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    loss_axes.plot(epochs, [row["train_loss"] for row in history], "o-", ms=3, label="train")
    accuracy_axes.plot(epochs, [100 * row["train_accuracy"] for row in history], "o-", ms=3,
                       label="train")
    if has_val:
        val_accuracy = [100 * row["val_accuracy"] for row in history]
        loss_axes.plot(epochs, [row["val_loss"] for row in history], "o-", ms=3,
                       label="validation")
        accuracy_axes.plot(epochs, val_accuracy, "o-", ms=3, label="validation")
        best = max(range(len(history)), key=lambda i: (val_accuracy[i], -i))
        for axes in (loss_axes, accuracy_axes):
            axes.axvline(epochs[best], color="gray", linestyle="--", linewidth=1,
                         label=f"best epoch ({epochs[best]})")
        accuracy_axes.annotate(f"{val_accuracy[best]:.2f}%", (epochs[best], val_accuracy[best]),
                               textcoords="offset points", xytext=(6, -14))
    loss_axes.set(title="Loss", xlabel="epoch", ylabel="cross-entropy", yscale="log")
    accuracy_axes.set(title="Accuracy", xlabel="epoch", ylabel="accuracy (%)")
    low = min(100 * row["train_accuracy"] for row in history[len(history) // 3:])
    accuracy_axes.set_ylim(max(low - 1, 0), 100)    # the interesting part: the last stretch
    for axes in (loss_axes, accuracy_axes):
        axes.grid(alpha=0.3)
        axes.legend()
        axes.xaxis.get_major_locator().set_params(integer=True)
    _save(figure, path)


def confusion_matrix(confusion: list[list[int]], classes: list[str], title: str,
                     path: str | Path, kind: str = "digit") -> None:
    """The matrix as a heatmap with counts, beside each class's accuracy; ``kind`` names what
    the classes are on the axes ("digit", "class")."""
    figure = Figure(figsize=(10, 5.2), layout="constrained")
    matrix_axes, class_axes = figure.subplots(1, 2, width_ratios=[1.35, 1])
    n = len(classes)
    errors = [[0 if i == j else confusion[i][j] for j in range(n)] for i in range(n)]
    # Colour by the errors alone: the diagonal would otherwise wash out every mistake.
    image = matrix_axes.imshow(errors, cmap="Reds")
    for i in range(n):
        for j in range(n):
            count = confusion[i][j]
            if count or i == j:
                dark = i != j and count > 0.6 * max(map(max, errors))
                matrix_axes.text(j, i, str(count), ha="center", va="center", fontsize=8,
                                 color="white" if dark else "black",
                                 fontweight="bold" if i == j else "normal")
    matrix_axes.set(xticks=range(n), yticks=range(n), xticklabels=classes, yticklabels=classes,
                    xlabel=f"predicted {kind}", ylabel=f"true {kind}",
                    title="Confusion matrix (colour: mistakes)")
    if max(map(len, classes)) > 2:      # names, not digits: tilt them so they do not overlap
        matrix_axes.tick_params(axis="x", labelrotation=45)
    figure.colorbar(image, ax=matrix_axes, shrink=0.8, label="misclassified images")
    accuracy = [100 * confusion[i][i] / max(sum(confusion[i]), 1) for i in range(n)]
    bars = class_axes.barh(range(n), accuracy, color="tab:blue")
    class_axes.bar_label(bars, labels=[f"{a:.2f}%" for a in accuracy], padding=3, fontsize=8)
    class_axes.set(yticks=range(n), yticklabels=classes, xlabel="accuracy (%)",
                   ylabel=f"true {kind}", title="Per-class accuracy")
    class_axes.set_xlim(max(min(accuracy) - 2, 0), 100.6)
    class_axes.invert_yaxis()
    class_axes.grid(axis="x", alpha=0.3)
    figure.suptitle(title)
    _save(figure, path)


def reliability_diagram(before: list, after: list, temperature: float, title: str,
                        path: str | Path) -> None:
    """Accuracy against confidence per bin ((mean confidence, accuracy, count) rows), for the
    network's own probabilities and the calibrated ones, above how many images each bin
    holds: on the diagonal, a probability means what it says; a bin of a few images is noisy."""
    figure = Figure(figsize=(6, 6.4), layout="constrained")
    axes, counts = figure.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    axes.plot([0, 1], [0, 1], color="gray", linestyle="--", linewidth=1, label="perfect")
    for rows, label, style in [(before, "the network's own", "o-"),
                               (after, f"calibrated (temperature {temperature:.2f})", "s-")]:
        confidence, accuracy, count = zip(*rows)
        axes.plot(confidence, accuracy, style, ms=4, label=label)
        counts.plot(confidence, count, style, ms=4)
    axes.set(ylabel="accuracy", xlim=(0, 1.02), ylim=(0, 1.02), title=title)
    counts.set(xlabel="confidence (probability of the answer)", ylabel="images", yscale="log")
    for a in (axes, counts):
        a.grid(alpha=0.3)
    axes.legend(loc="upper left")
    _save(figure, path)
