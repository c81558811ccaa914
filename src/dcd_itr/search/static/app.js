// The dcd-itr search page: one query form (text or image, by the index's side), results as an image grid.
// Text from the index is inserted with textContent only, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
let health = null;

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function clamp(value, low, high) {
  const number = Math.round(Number(value));
  return Math.min(high, Math.max(low, Number.isFinite(number) ? number : low));
}

function describeError(body, status) {
  if (body && typeof body.detail === "string") return body.detail;
  if (body && Array.isArray(body.detail)) return body.detail.map((d) => d.msg).join("; ");
  return `request failed (HTTP ${status})`;
}

function renderHits(hits) {
  const grid = $("results");
  grid.replaceChildren();
  for (const hit of hits) {
    const figure = document.createElement("figure");
    figure.className = "hit";
    const img = document.createElement("img");
    img.src = hit.image_url;
    img.alt = hit.text || hit.captions[0] || hit.image_id;
    img.loading = "lazy";
    const caption = document.createElement("figcaption");
    const title = document.createElement("div");
    title.textContent = `${hit.rank}. ${hit.text || hit.captions.slice(0, 2).join(" · ") || hit.image_id}`;
    const score = document.createElement("div");
    score.className = "score";
    score.textContent = `score ${hit.score.toFixed(4)}` +
      (hit.cross_score === null ? "" : ` · cross ${hit.cross_score.toFixed(3)}`);
    caption.append(title, score);
    figure.append(img, caption);
    grid.append(figure);
  }
}

async function runSearch(request) {
  const started = performance.now();
  setStatus("Searching…");
  let response;
  try {
    response = await fetch(request.url, request.init);
  } catch (error) {
    setStatus(`network error: ${error}`, true);
    return;
  }
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    setStatus(describeError(body, response.status), true);
    return;
  }
  renderHits(body.hits);
  const roundTrip = performance.now() - started;
  const reranked = (body.rerank ? `, re-ranked top ${body.rerank}` : "") +
    (request.capped ? ` (k capped at ${health.limits.max_k})` : "");
  setStatus(`${body.hits.length} results${reranked} — server ${body.milliseconds.total.toFixed(1)} ms, ` +
    `round trip ${roundTrip.toFixed(0)} ms`);
}

function textRequest() {
  const limits = health.limits;
  const rerank = $("rerank").checked ? clamp($("rerank-k").value, 1, limits.max_rerank) : 0;
  const payload = { query: $("query").value, k: clamp($("k").value, 1, limits.max_k), rerank };
  return {
    capped: Number($("k").value) > limits.max_k,
    url: "/search/text",
    init: { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(payload) },
  };
}

function imageRequest() {
  const limits = health.limits;
  const file = $("image").files[0];
  if (file && file.size > limits.max_upload_bytes) throw new Error(`image over ${limits.max_upload_bytes} bytes`);
  const form = new FormData();
  form.append("file", file);
  form.append("k", clamp($("image-k").value, 1, limits.max_k));
  form.append("rerank", $("image-rerank").checked ? clamp($("image-rerank-k").value, 1, limits.max_rerank) : 0);
  return {
    url: "/search/image", init: { method: "POST", body: form }, capped: Number($("image-k").value) > limits.max_k,
  };
}

async function start() {
  try {
    health = await (await fetch("/health")).json();
  } catch (error) {
    setStatus(`cannot reach the service: ${error}`, true);
    return;
  }
  const textSide = health.side === "images";
  $("about").textContent = `${health.items} ${health.side} indexed` +
    (health.rerank_available ? "; cross-encoder re-ranking available" : "; no re-ranker loaded");
  $(textSide ? "text-form" : "image-form").classList.remove("hidden");
  for (const id of ["rerank", "rerank-k", "image-rerank", "image-rerank-k"]) {
    $(id).disabled = !health.rerank_available;
  }
  $("rerank-k").value = $("image-rerank-k").value = health.limits.default_rerank;
  for (const id of ["k", "image-k"]) {  // the service caps k: say so rather than cap it silently
    $(id).max = health.limits.max_k;
    $(`${id}-note`).textContent = `(at most ${health.limits.max_k})`;
  }
  $("text-form").addEventListener("submit", (event) => {
    event.preventDefault();
    runSearch(textRequest());
  });
  $("image-form").addEventListener("submit", (event) => {
    event.preventDefault();
    try {
      runSearch(imageRequest());
    } catch (error) {
      setStatus(String(error.message || error), true);
    }
  });
  setStatus("");
}

start();
