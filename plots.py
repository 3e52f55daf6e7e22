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


def training_curves(history: list[dict], path: str | Path, kept: int) -> None:
    """Loss and accuracy per epoch, training and validation, with the kept epoch marked."""
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
        at = epochs.index(kept)
        for axes in (loss_axes, accuracy_axes):
            axes.axvline(kept, color="gray", linestyle="--", linewidth=1,
                         label=f"kept epoch ({kept})")
        accuracy_axes.annotate(f"{val_accuracy[at]:.2f}%", (kept, val_accuracy[at]),
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


def study_curves(histories: dict[int, list[dict]], kept: dict[int, int], title: str,
                 path: str | Path) -> None:
    """Every seed's validation accuracy per epoch (its ``kept`` epoch marked), and the
    training loss: where the runs agree and how far apart they end."""
    figure = Figure(figsize=(10, 4), layout="constrained")
    accuracy_axes, loss_axes = figure.subplots(1, 2)
    for seed, history in histories.items():
        epochs = [row["epoch"] for row in history]
        loss_axes.plot(epochs, [row["train_loss"] for row in history], linewidth=1)
        if history[0]["val_accuracy"] is None:
            continue
        accuracy = [100 * row["val_accuracy"] for row in history]
        line, = accuracy_axes.plot(epochs, accuracy, linewidth=1, label=f"seed {seed}")
        at = epochs.index(kept[seed])
        accuracy_axes.plot(kept[seed], accuracy[at], "o", ms=4, color=line.get_color())
    late = [100 * row["val_accuracy"] for history in histories.values()
            for row in history[len(history) // 3:] if row["val_accuracy"] is not None]
    if late:
        accuracy_axes.set_ylim(min(late) - 0.1, max(late) + 0.05)
        accuracy_axes.legend(fontsize=7, ncol=2)
    accuracy_axes.set(title="Validation accuracy (dot: the kept epoch)", xlabel="epoch",
                      ylabel="accuracy (%)")
    loss_axes.set(title="Training loss", xlabel="epoch", ylabel="cross-entropy", yscale="log")
    for axes in (accuracy_axes, loss_axes):
        axes.grid(alpha=0.3)
        axes.xaxis.get_major_locator().set_params(integer=True)
    figure.suptitle(title)
    _save(figure, path)


def layer_view(pixels, outputs: dict, kernels: dict, classes: list[str], probabilities,
               title: str, path: str | Path) -> None:
    """What each layer of LeNet-5 computes for one image: the input, the maps of C1, S2, C3
    and S4 and the units of C5 and F6 (tanh outputs, one scale from -1 to 1, blue below zero
    and red above), the answer's probabilities, and the learned C1 and C3 kernels (one scale
    per layer, from the largest weight)."""
    figure = Figure(figsize=(11, 13), layout="constrained")
    top, maps, strips, kernel_rows = figure.subfigures(4, 1, height_ratios=[2.2, 6.6, 1.5, 3.2])
    image_axes, bar_axes = top.subplots(1, 2, width_ratios=[1, 2.2])
    image_axes.imshow(pixels.numpy(), cmap="gray", vmin=0, vmax=1)
    image_axes.set_title("input, 28x28")
    image_axes.set_axis_off()
    best = int(probabilities.argmax())
    probabilities = probabilities.tolist()
    bars = bar_axes.barh(range(len(classes)), [100 * p for p in probabilities],
                         color=["tab:blue" if i == best else "lightgray"
                                for i in range(len(classes))])
    bar_axes.bar_label(bars, labels=[f"{100 * p:.1f}%" for p in probabilities], padding=3,
                       fontsize=8)
    bar_axes.set(yticks=range(len(classes)), yticklabels=classes, xlim=(0, 115),
                 xlabel="probability (%)", title="output: 10 units, as probabilities")
    bar_axes.invert_yaxis()

    layers = [("C1", "6 maps 28x28: 5x5 kernels on the input"),
              ("S2", "6 maps 14x14: C1 averaged over 2x2"),
              ("C3", "16 maps 10x10: 5x5 kernels on all of S2"),
              ("S4", "16 maps 5x5: C3 averaged over 2x2")]
    rows = maps.subfigures(len(layers), 1, height_ratios=[1.5, 1.3, 1.4, 1.4])
    for row, (name, what) in zip(rows, layers):
        layer = outputs[name]
        columns = min(len(layer), 8)
        grid = row.subplots(-(-len(layer) // columns), columns, squeeze=False)
        for i, axes in enumerate(grid.flat):
            axes.set_axis_off()
            if i < len(layer):
                shown = axes.imshow(layer[i].numpy(), cmap="RdBu_r", vmin=-1, vmax=1)
                axes.set_title(str(i), fontsize=7, pad=2)
        row.suptitle(f"{name}: {what}", fontsize=9, x=0.01, ha="left")
    row.colorbar(shown, ax=grid, shrink=0.8, label="tanh output")

    for axes, name, what in zip(strips.subplots(2, 1), ("C5", "F6"),
                                ("120 units: 5x5 kernels on all of S4",
                                 "84 units, fully connected to C5")):
        axes.imshow(outputs[name].reshape(1, -1).numpy(), cmap="RdBu_r", vmin=-1, vmax=1,
                    aspect="auto")
        axes.set(yticks=[], title=f"{name}: {what}")
        axes.title.set_fontsize(9)

    c1, c3 = kernel_rows.subfigures(1, 2, width_ratios=[1, 2.4])
    for part, name, layer in ((c1, "C1", kernels["C1"][:, 0]), (c3, "C3", kernels["C3"])):
        scale = float(layer.abs().max())
        if layer.dim() == 3:      # C1: one kernel per map
            grid = part.subplots(2, 3)
            for i, axes in enumerate(grid.flat):
                shown = axes.imshow(layer[i].numpy(), cmap="RdBu_r", vmin=-scale, vmax=scale)
                axes.set_title(f"map {i}", fontsize=7, pad=2)
                axes.set_axis_off()
            part.suptitle("C1 kernels (5x5)", fontsize=9)
        else:                     # C3: a row of 6 kernels (one per S2 map) for each map
            tiles = layer.new_full((16 * 6, 6 * 6), float("nan"))
            for m in range(16):
                for k in range(6):
                    tiles[m * 6:m * 6 + 5, k * 6:k * 6 + 5] = layer[m, k]
            axes = part.subplots()
            shown = axes.imshow(tiles.T.numpy(), cmap="RdBu_r", vmin=-scale, vmax=scale)
            axes.set(xticks=[m * 6 + 2 for m in range(16)], xticklabels=range(16),
                     yticks=[k * 6 + 2 for k in range(6)], yticklabels=range(6),
                     xlabel="C3 map", ylabel="S2 map")
            axes.tick_params(length=0, labelsize=7)
            for side in axes.spines.values():
                side.set_visible(False)
            part.suptitle("C3 kernels (5x5; a column of 6 for each map)", fontsize=9)
        part.colorbar(shown, ax=part.axes, shrink=0.7, label="weight")
    figure.suptitle(title)
    _save(figure, path)
