// The drawing page: strokes on a canvas (Pointer Events: mouse, touch and pen alike) are sent
// as PNG bytes to draw.py, which prepares them as show.py --image does and answers with the ten
// probabilities, the 28x28 image the model saw and every layer's output. Photos are sent as
// they are.
"use strict";

const pad = document.getElementById("pad");
const ink = pad.getContext("2d");
const seen = document.getElementById("seen").getContext("2d");
const answer = document.getElementById("answer");
const error = document.getElementById("error");
const bars = document.getElementById("bars");
let classes = [...Array(10).keys()].map(String);

function blankPad() {
  ink.fillStyle = "#fff";
  ink.fillRect(0, 0, pad.width, pad.height);
  ink.lineWidth = pad.width / 12;    // about MNIST's strokes against a digit this tall
  ink.lineCap = ink.lineJoin = "round";
  ink.strokeStyle = "#000";
}

function makeBars() {
  bars.replaceChildren(...classes.map((name) => {
    const row = document.createElement("li");
    row.innerHTML = '<span class="label"></span><span class="bar"><span class="fill"></span>' +
                    '</span><span class="percent">0%</span>';
    row.querySelector(".label").textContent = name;
    return row;
  }));
}

function showError(message) {
  clearReading();          // an answer left beside the error would seem to be about this picture
  answer.textContent = "No reading";
  error.textContent = message;
  error.hidden = false;      // role="alert" speaks it
}

// Words for how sure a reading is; the probabilities are calibrated (a reading shown at 90 %
// is right about 9 times in 10), so the words can follow them.
function sureness(p) {
  return p >= 0.95 ? "sure" : p >= 0.7 ? "fairly sure" : "unsure";
}

function showReading(reading) {
  error.hidden = true;
  const p = reading.probabilities;
  const best = reading.best;
  const percent = `${(100 * p[best]).toFixed(1)}%`;
  document.body.dataset.reading = reading.digit ? "digit" : "none";
  if (reading.digit) {
    answer.textContent = `Read as ${classes[best]}: ${sureness(p[best])} (${percent})`;
    answer.dataset.digit = classes[best];
  } else {
    answer.textContent = `Not a digit (as a digit: ${classes[best]}, ${percent})`;
    delete answer.dataset.digit;
  }
  [...bars.children].forEach((row, i) => {
    row.classList.toggle("top", i === best);
    row.querySelector(".fill").style.width = `${100 * p[i]}%`;
    row.querySelector(".percent").textContent = `${(100 * p[i]).toFixed(1)}%`;
  });
  const pixels = seen.createImageData(28, 28);
  reading.seen.forEach((v, i) => {
    pixels.data.set([v, v, v, 255], 4 * i);
  });
  seen.putImageData(pixels, 0, 0);
  showLayers(reading.layers);
}

function clearReading() {
  answer.textContent = "Draw a digit";
  delete answer.dataset.digit;
  delete document.body.dataset.reading;
  error.hidden = true;
  makeBars();
  seen.clearRect(0, 0, 28, 28);
  showLayers(null);
}

// Inside the network: each layer's outputs as small images (maps) or one strip of units, in
// the order and shapes of LeNet-5 (net.py). The server sends them as signed bytes, 127 = 1.
const LAYERS = [
  {name: "C1", maps: 6, side: 28, what: "6 maps 28×28: a 5×5 kernel slides over the input"},
  {name: "S2", maps: 6, side: 14, what: "6 maps 14×14: C1 averaged over 2×2"},
  {name: "C3", maps: 16, side: 10, what: "16 maps 10×10: 5×5 kernels slide over all of S2"},
  {name: "S4", maps: 16, side: 5, what: "16 maps 5×5: C3 averaged over 2×2"},
  {name: "C5", units: 120, what: "120 units: each sees all of S4 through 16 5×5 kernels"},
  {name: "F6", units: 84, what: "84 units, each connected to all of C5"},
];
const layerBox = document.getElementById("layers");
const detailName = document.getElementById("detail-name");
const detailKernels = document.getElementById("detail-kernels");
let kernels = {};        // per layer: its shape and weights in [-1, 1] of its largest
let outputs = null;      // the latest reading's layer outputs, or null

function signedBytes(text) {
  return Int8Array.from(atob(text), (c) => c.charCodeAt(0));
}

// A diverging colour map: blue for -1, near-white for 0, red for +1.
function colour(v) {
  const t = Math.min(1, Math.abs(v) / 127);
  const end = v < 0 ? [33, 102, 172] : [178, 24, 43];
  return [0, 1, 2].map((k) => Math.round(247 + (end[k] - 247) * t));
}

function paint(canvas, values) {
  const context = canvas.getContext("2d");
  const image = context.createImageData(canvas.width, canvas.height);
  values.forEach((v, i) => image.data.set([...colour(v), 255], 4 * i));
  context.putImageData(image, 0, 0);
}

function makeLayers() {
  layerBox.replaceChildren(...LAYERS.map((layer) => {
    const row = document.createElement("div");
    row.className = `layer ${layer.units ? "strip" : `side-${layer.side}`}`;
    row.innerHTML = '<h3></h3><div class="maps"></div>';
    row.querySelector("h3").textContent = `${layer.name}: ${layer.what}`;
    const count = layer.units ? 1 : layer.maps;
    for (let i = 0; i < count; i++) {
      const canvas = document.createElement("canvas");
      canvas.width = layer.units || layer.side;
      canvas.height = layer.units ? 1 : layer.side;
      canvas.dataset.layer = layer.name;
      canvas.dataset.index = i;
      canvas.setAttribute("role", "img");
      canvas.setAttribute("aria-label", layer.units ? `${layer.name}, ${layer.units} units`
                                                    : `${layer.name} map ${i}`);
      row.querySelector(".maps").append(canvas);
    }
    return row;
  }));
}

function showLayers(layers) {
  outputs = layers && Object.fromEntries(LAYERS.map((l) => [l.name, signedBytes(layers[l.name])]));
  for (const canvas of layerBox.querySelectorAll("canvas")) {
    const size = canvas.width * canvas.height;
    const start = Number(canvas.dataset.index) * size;
    if (outputs) paint(canvas, outputs[canvas.dataset.layer].subarray(start, start + size));
    else canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
  }
}

function kernelCanvas(values) {
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = 5;
  paint(canvas, values);
  return canvas;
}

// What a map is and the kernels that make it; a strip names the unit under the pointer.
function explain(canvas, event) {
  const layer = canvas.dataset.layer;
  const i = Number(canvas.dataset.index);
  layerBox.querySelectorAll(".selected").forEach((c) => c.classList.remove("selected"));
  canvas.classList.add("selected");
  const spec = LAYERS.find((l) => l.name === layer);
  if (spec.units) {
    const box = canvas.getBoundingClientRect();
    const unit = Math.min(spec.units - 1,
                          Math.floor((event.clientX - box.left) / box.width * spec.units));
    const value = outputs ? (outputs[layer][unit] / 127).toFixed(2) : "–";
    detailName.textContent = `${layer} unit ${unit}: output ${value}`;
    detailKernels.replaceChildren();
    return;
  }
  const own = kernels[layer];
  if (!own) {       // S2, S4: averages, with nothing learned
    detailName.textContent = `${layer} map ${i}: the averages of 2×2 squares of ` +
                             `${layer === "S2" ? "C1" : "C3"} map ${i}; no kernel of its own`;
    detailKernels.replaceChildren();
    return;
  }
  const [, inputs, h, w] = own.shape;
  const size = inputs * h * w;
  detailName.textContent = layer === "C1"
    ? `C1 map ${i}: its 5×5 kernel slides over the input, then tanh`
    : `C3 map ${i}: its 6 kernels (one for each S2 map) slide over S2 and are summed, ` +
      `then tanh; kernels shown left to right for S2 maps 0–5`;
  detailName.textContent += ` (weights from −${own.scale.toFixed(2)} in blue to ` +
                            `+${own.scale.toFixed(2)} in red, the largest of ${layer})`;
  const parts = [];
  for (let k = 0; k < inputs; k++) {
    const start = i * size + k * h * w;
    parts.push(kernelCanvas(own.values.subarray(start, start + h * w)));
  }
  detailKernels.replaceChildren(...parts);
}

for (const kind of ["pointermove", "click"]) {
  layerBox.addEventListener(kind, (event) => {
    if (event.target.dataset && event.target.dataset.layer) explain(event.target, event);
  });
}

// Screen readers hear the final answer once, when the pen is up and nothing is pending, not
// every reading on the way.
const spoken = document.getElementById("spoken");
function announce(text) {
  spoken.textContent = text;
}

// One request at a time; what arrives meanwhile replaces what waits, so the answer follows
// the pen without a queue of stale drawings. The page's state says when the answer is final
// ("idle": nothing in flight, nothing waiting).
let busy = false;
let waiting = null;
let cleared = 0;      // how many times Clear was pressed: older answers are not shown

async function read(picture) {        // picture: a function giving the bytes to send
  if (busy) {
    waiting = picture;
    return;
  }
  busy = true;
  document.body.dataset.state = "reading";
  const asked = cleared;
  try {
    const body = await picture();
    const response = await fetch("/api/read", {method: "POST", body});
    const reply = await response.json().catch(() => ({}));
    if (asked !== cleared) return;
    if (response.ok) showReading(reply);
    else showError(reply.error || `the server answered ${response.status}`);
  } catch (e) {
    if (asked === cleared) showError("draw.py did not answer: is it still running?");
  } finally {
    busy = false;
    if (waiting) {
      const next = waiting;
      waiting = null;
      read(next);
    } else {
      document.body.dataset.state = "idle";
      if (!last && error.hidden) announce(answer.textContent);
    }
  }
}

const drawing = () => new Promise((done) => pad.toBlob(done, "image/png"));

let last = null;      // where the pen is while it touches the pad

function at(event) {
  const box = pad.getBoundingClientRect();
  return [(event.clientX - box.left) * pad.width / box.width,
          (event.clientY - box.top) * pad.height / box.height];
}

pad.addEventListener("pointerdown", (event) => {
  pad.setPointerCapture(event.pointerId);
  last = at(event);
  ink.beginPath();
  ink.arc(...last, ink.lineWidth / 2, 0, 2 * Math.PI);
  ink.fillStyle = "#000";
  ink.fill();
  read(drawing);
});

pad.addEventListener("pointermove", (event) => {
  if (!last) return;
  const points = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
  ink.beginPath();
  ink.moveTo(...last);
  for (const point of points.length ? points : [event]) {
    last = at(point);
    ink.lineTo(...last);
  }
  ink.stroke();
  read(drawing);
});

for (const end of ["pointerup", "pointercancel"]) {
  pad.addEventListener(end, () => {
    if (last) read(drawing);
    last = null;
  });
}

document.getElementById("clear").addEventListener("click", () => {
  waiting = null;
  cleared += 1;
  blankPad();
  clearReading();
});

async function readPhoto(file) {
  document.body.dataset.state = "reading";     // the photo is decoded before it is sent
  blankPad();
  clearReading();
  answer.textContent = "Reading the photo…";
  try {      // show the photo on the pad; the server reads the file itself
    const photo = await createImageBitmap(file);
    const scale = Math.min(pad.width / photo.width, pad.height / photo.height);
    const w = photo.width * scale, h = photo.height * scale;
    ink.drawImage(photo, (pad.width - w) / 2, (pad.height - h) / 2, w, h);
  } catch (e) {
    // not a picture the browser can show: the server's answer says what is wrong with it
  }
  read(async () => file);
}

document.getElementById("file").addEventListener("change", (event) => {
  if (event.target.files.length) readPhoto(event.target.files[0]);
  event.target.value = "";      // choosing the same file again reads it again
});

const drop = document.getElementById("drop");
drop.addEventListener("dragover", (event) => {
  event.preventDefault();
  drop.classList.add("dragging");
});
drop.addEventListener("dragleave", () => drop.classList.remove("dragging"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("dragging");
  if (event.dataTransfer.files.length) readPhoto(event.dataTransfer.files[0]);
});

function percent(x) {
  return x == null ? "unknown" : `${(100 * x).toFixed(2)}%`;
}

fetch("/api/model").then((response) => response.json()).then((model) => {
  classes = model.classes;
  kernels = Object.fromEntries(Object.entries(model.kernels).map(
    ([name, k]) => [name, {shape: k.shape, scale: k.scale, values: signedBytes(k.values)}]));
  makeBars();
  document.getElementById("model").textContent =
    `Model: ${model.checkpoint} (${model.dataset}, epoch ${model.epoch ?? "?"}, ` +
    `validation accuracy ${percent(model.val_accuracy)}, ` +
    `test accuracy ${percent(model.test_accuracy)}). ` +
    (model.calibrated ? "A reading shown at 90% is right about 9 times in 10."
                      : "Its probabilities are not calibrated, and it never says " +
                        "\u201cnot a digit\u201d.");
}).catch(() => showError("draw.py did not answer: is it still running?"));

blankPad();
makeBars();
makeLayers();
