// msk-triton web page: posts the chosen files to /api/score and draws what comes back.
// Every message shown is built from the API's own sentences; no stack trace ever reaches the page.
"use strict";

const $ = (sel) => document.querySelector(sel);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) if (c) node.append(c);
  return node;
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

const fmt = (p) => p.toFixed(3);

function callBadge(abnormal, threshold) {
  if (abnormal === null || abnormal === undefined) {
    return el("span", { class: "call unknown", text: "no call" });
  }
  const word = abnormal ? "abnormal" : "normal";
  return el("span", { class: `call ${word}`, "data-call": word,
                      text: `${word} (threshold ${fmt(threshold)})` });
}

function memberTable(members) {
  const table = el("table", { class: "members" });
  table.append(el("tr", {}, el("th", { text: "member" }), el("th", { text: "probability" })));
  for (const [name, p] of Object.entries(members)) {
    table.append(el("tr", { "data-member": name },
      el("td", { text: name }), el("td", { class: "member-probability", "data-value": String(p),
                                           text: fmt(p) })));
  }
  return table;
}

function drawBoxes(item) {
  const box = svg("svg", { class: "boxes", viewBox: `0 0 ${item.width} ${item.height}`,
                           preserveAspectRatio: "none" });
  const stroke = Math.max(2, Math.round(Math.max(item.width, item.height) / 300));
  const font = Math.max(14, Math.round(Math.max(item.width, item.height) / 32));
  for (const b of item.boxes) {
    const g = svg("g", { class: "box", "data-label": b.label });
    g.append(svg("rect", { x: b.x1, y: b.y1, width: b.x2 - b.x1, height: b.y2 - b.y1,
                           "stroke-width": stroke, style: `stroke: ${b.colour}` }));
    const t = svg("text", { x: b.x1, y: Math.max(font, b.y1 - stroke), "font-size": font,
                            style: `fill: ${b.colour}; stroke: #000; stroke-width: ${stroke}px; paint-order: stroke` });
    t.textContent = `${b.label} ${b.score.toFixed(2)}`;
    g.append(t);
    box.append(g);
  }
  return box;
}

function imageCard(item) {
  const card = el("article", { class: "card image-card", "data-filename": item.filename });
  card.append(el("h2", { text: item.filename }));
  if (item.error) {
    card.classList.add("failed");
    if (item.error_reason === "out_of_distribution") {
      card.classList.add("out-of-distribution");
      card.append(el("p", { class: "error ood", text: "Not assessed: this image is not like the images the model was built on (out of distribution), so no probability or call is given." }));
    }
    card.append(el("p", { class: "error image-error", text: item.error }));
    return card;
  }
  const viewer = el("div", { class: "viewer" });
  viewer.append(el("img", { class: "radiograph", src: item.image, alt: `radiograph ${item.filename}` }));
  if (item.heatmap) {
    const heat = el("img", { class: "heatmap", alt: "class activation heatmap",
                             "data-relative": item.heatmap.relative,
                             "data-absolute": item.heatmap.absolute });
    heat.src = item.heatmap[$("#heat-scale").value];
    heat.style.opacity = $("#opacity").value;
    viewer.append(heat);
  }
  if (item.boxes && item.boxes.length) {
    const boxes = drawBoxes(item);
    boxes.style.display = $("#show-boxes").checked ? "" : "none";
    viewer.append(boxes);
  }
  card.append(viewer);
  const summary = el("p", { class: "summary" },
    el("span", { class: "probability", "data-value": String(item.probability),
                 text: fmt(item.probability) }),
    document.createTextNode(" probability of abnormality "),
    callBadge(item.abnormal, item.threshold));
  card.append(summary);
  if (item.in_distribution === false) {
    card.classList.add("out-of-distribution");
    card.append(el("p", { class: "warn ood", text: `Out of distribution: this image is not like the images the model was built on (OOD score ${fmt(item.ood_score)} above its threshold ${fmt(item.ood_threshold)}). Do not rely on this result.` }));
  } else if (item.ood_score !== null && item.ood_score !== undefined) {
    card.append(el("p", { class: "note ood", text: `In distribution (OOD score ${fmt(item.ood_score)}, threshold ${fmt(item.ood_threshold)}).` }));
  }
  if (item.member_spread !== null && item.member_spread !== undefined) {
    card.append(el("p", { class: "note spread", text: `Members disagree by ${fmt(item.member_spread)} (max - min of the four probabilities).` }));
  }
  if (item.body_part) card.append(el("p", { class: "note", text: `body part: ${item.body_part}` }));
  if (item.boxes_error) card.append(el("p", { class: "warn", text: `Wrist structures: ${item.boxes_error}` }));
  else if (item.boxes && !item.boxes.length) card.append(el("p", { class: "note", text: "No wrist structures detected." }));
  card.append(memberTable(item.members));
  const versions = Object.entries({ ...(item.versions || {}), ...(item.wrist_versions || {}) }).map(([k, v]) => `${k === "pipeline" ? "mura_ensemble" : k} v${v}`).join(" · ");
  card.append(el("p", { class: "versions", text: `models: ${versions}` }));
  if (item.weights && item.weights !== "trained") {
    card.append(el("p", { class: "warn weights", text: `Weights: ${item.weights} (not trained on radiographs; scores are not meaningful).` }));
  }
  return card;
}

function renderStudy(study) {
  const section = $("#study");
  section.replaceChildren();
  section.hidden = false;
  section.append(el("h1", { text: "Study" }));
  if (study.probability == null) {
    const why = study.refused === study.images && study.images
      ? "Not assessed: every image of this study is out of distribution for the model."
      : `No image of this study could be scored (${study.failed} of ${study.images} failed).`;
    section.append(el("p", { class: "error", text: why }));
    return;
  }
  section.append(el("p", {},
    el("span", { class: "probability study-probability", "data-value": String(study.probability),
                 text: fmt(study.probability) }),
    document.createTextNode(` mean over ${study.scored} image${study.scored === 1 ? "" : "s"} `),
    callBadge(study.abnormal, study.threshold)));
  if (study.failed) section.append(el("p", { class: "warn", text: `${study.failed} image(s) could not be scored; see below.` }));
  if (study.refused) section.append(el("p", { class: "warn ood", text: `${study.refused} image(s) were not assessed (out of distribution); the study call uses the other ${study.scored}.` }));
  if (study.out_of_distribution) section.append(el("p", { class: "warn ood", text: `${study.out_of_distribution} scored image(s) are out of distribution; the study call includes them.` }));
  if (study.mixed_body_parts) section.append(el("p", { class: "note", text: "Images have different body parts; the default threshold is used for the study call." }));
  section.append(memberTable(study.members));
}

function showMessage(text, isError) {
  const m = $("#message");
  m.textContent = text;
  m.className = isError ? "message error" : "message";
}

async function score(event) {
  event.preventDefault();
  const files = $("#files").files;
  if (!files.length) { showMessage("Choose one or more PNG, JPEG or DICOM files first.", true); return; }
  const data = new FormData();
  for (const f of files) data.append("files", f, f.name);
  data.append("body_part", $("#body-part").value);
  $("#score-button").disabled = true;
  $("#results").replaceChildren();
  $("#study").hidden = true;
  showMessage(`Scoring ${files.length} image${files.length === 1 ? "" : "s"}…`, false);
  document.body.dataset.state = "scoring";
  try {
    let response, payload;
    try {
      response = await fetch("/api/score", { method: "POST", body: data });
    } catch (err) {
      throw new Error("The web server did not answer. Is `msk web` still running?");
    }
    try { payload = await response.json(); } catch (err) {
      throw new Error(`The web server answered with an unreadable response (HTTP ${response.status}).`);
    }
    if (!response.ok) throw new Error(payload.error || `Request failed (HTTP ${response.status}).`);
    for (const item of payload.images) $("#results").append(imageCard(item));
    renderStudy(payload.study);
    const failed = payload.images.filter((i) => i.error).length;
    if (failed === payload.images.length) showMessage(payload.images[0].error, true);
    else if (failed) showMessage(`${failed} of ${payload.images.length} images could not be scored.`, true);
    else showMessage("Done.", false);
  } catch (err) {
    showMessage(err.message, true);
  } finally {
    $("#score-button").disabled = false;
    document.body.dataset.state = "done";
  }
}

function init() {
  $("#upload-form").addEventListener("submit", score);
  $("#opacity").addEventListener("input", (e) => {
    $("#opacity-value").textContent = e.target.value;
    for (const img of document.querySelectorAll("img.heatmap")) img.style.opacity = e.target.value;
  });
  $("#heat-scale").addEventListener("change", (e) => {
    for (const img of document.querySelectorAll("img.heatmap")) img.src = img.dataset[e.target.value];
  });
  $("#show-boxes").addEventListener("change", (e) => {
    for (const s of document.querySelectorAll("svg.boxes")) s.style.display = e.target.checked ? "" : "none";
  });
}

init();
