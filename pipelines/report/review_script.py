"""The review page's inline style and script (no file, font or library from elsewhere: the page opens from disk).

The script reads the page's data (``<script type="application/json" id="review-data">``, made by
`pipelines.report.review_page`) and keeps one state object::

    {"position": int, "reviewer": str,
     "decisions": {sample_id: {"decision", "reason", "time", "shard", "model_id", "stratum"}}}

in ``localStorage`` under the data's ``storage_key`` (one key per label run, `pipelines.common.reviews`), written
after every change, so a reload, or a page made again for the same labels, finds the decisions made so far. A
decision keeps the person's shard and model, so decisions about persons of an earlier page of the same labels are
saved too. The download builds ``review.json`` from the data's ``review_header`` (format, version, label run,
sample) plus ``reviewer``, ``saved_at`` and the decisions sorted by sample id.

Keys (none while the name field has focus; none with Ctrl, Alt or Meta, which stay the browser's):
``a`` accept; ``r`` reject, then ``1``-``6`` a reason or ``Enter``/``r`` none (``Esc`` cancels); ``s`` or right
arrow skip; ``b`` or left arrow back; ``u`` undo the person's decision; ``o`` overlay / photo; ``i`` details (the
confidence and tier are hidden by default, so they do not sway the judgement); ``d`` download; ``n`` the name field.

For tests and tools the page sets ``<body data-ready data-position data-decided data-view>`` after each change and
exposes ``window.dpmeshReview.reviewDocument()`` (what the download writes) and ``.state()``.
"""

CSS = """
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #1d2329;
       background: #f4f6f8; }
header { background: #1d2a38; color: #fff; padding: 12px 24px; }
header h1 { margin: 0 0 2px; font-size: 19px; }
header p { margin: 0; color: #b9c6d3; font-size: 12px; word-break: break-all; }
#bar { display: flex; flex-wrap: wrap; gap: 10px 18px; align-items: center; padding: 8px 24px; background: #e6ebf0;
       position: sticky; top: 0; z-index: 1; }
#bar progress { width: 220px; height: 12px; }
#bar input { font: inherit; padding: 3px 6px; width: 180px; }
#bar button { font: inherit; padding: 4px 12px; cursor: pointer; }
#bar a { color: #1d4f7a; }
#saved { color: #56616b; font-size: 12px; }
main { padding: 14px 24px 40px; }
#stage { display: flex; flex-wrap: wrap; gap: 18px; align-items: flex-start; }
figure { margin: 0; }
#view { display: block; width: min(512px, 92vw); height: auto; aspect-ratio: 1; background: #606060;
        border: 3px solid #dde3e8; image-rendering: auto; }
#view.accept { border-color: #2e7d32; }
#view.reject { border-color: #b03a2e; }
figcaption { font-size: 12px; color: #56616b; margin-top: 4px; }
.sid { font-family: ui-monospace, monospace; word-break: break-all; }
aside { flex: 1 1 300px; max-width: 460px; }
#verdict { font-size: 18px; font-weight: 600; min-height: 28px; }
#verdict.accept { color: #2e7d32; }
#verdict.reject { color: #b03a2e; }
#reasons { background: #fff8e1; border-left: 4px solid #e0a800; padding: 6px 10px; margin: 8px 0; }
#reasons ol { margin: 4px 0 0 0; padding-left: 22px; }
table { border-collapse: collapse; font-size: 13px; margin: 6px 0; }
td, th { border-bottom: 1px solid #e3e7eb; padding: 2px 10px 2px 0; text-align: left; vertical-align: top; }
th { color: #56616b; font-weight: 600; }
td.keys { white-space: nowrap; }
kbd { font-family: ui-monospace, monospace; background: #fff; border: 1px solid #c4ccd4; border-radius: 3px;
      padding: 0 4px; }
#details { background: #fff; border-radius: 6px; padding: 6px 10px; box-shadow: 0 1px 2px rgba(0,0,0,.08); }
#strip { display: flex; flex-wrap: wrap; gap: 3px; margin-top: 16px; }
#strip span { width: 12px; height: 12px; background: #c9d1d9; border-radius: 2px; cursor: pointer; }
#strip span.accept { background: #2e7d32; }
#strip span.reject { background: #b03a2e; }
#strip span.current { outline: 2px solid #1d2a38; outline-offset: 1px; }
.note { background: #fff8e1; border-left: 4px solid #e0a800; padding: 6px 10px; margin: 8px 0; }
"""

SCRIPT = r"""
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("review-data").textContent);
  var persons = data.persons;
  var KEY = data.storage_key;
  var reasonNames = data.reasons.map(function (pair) { return pair[0]; });
  var reasonText = {};
  data.reasons.forEach(function (pair) { reasonText[pair[0]] = pair[1]; });
  var $ = function (id) { return document.getElementById(id); };
  var state = load();
  var rejecting = false;
  var view = "overlay";
  var details = false;

  function load() {
    var empty = { position: 0, reviewer: "", decisions: {} };
    try {
      var kept = JSON.parse(window.localStorage.getItem(KEY) || "null");
      if (kept && typeof kept.decisions === "object" && kept.decisions !== null) {
        empty.decisions = kept.decisions;
        empty.reviewer = typeof kept.reviewer === "string" ? kept.reviewer : "";
        empty.position = Math.min(Math.max(0, kept.position | 0), Math.max(0, persons.length - 1));
      }
    } catch (e) { /* unreadable or blocked storage: start afresh, the page says it cannot keep decisions */ }
    return empty;
  }

  function save() {
    try {
      window.localStorage.setItem(KEY, JSON.stringify(state));
      $("saved").textContent = "kept in this browser";
    } catch (e) {
      $("saved").textContent = "this browser cannot keep decisions: download before closing";
    }
  }

  function current() { return persons[state.position]; }

  function decide(decision, reason) {
    var p = current();
    if (!p) { return; }
    state.decisions[p.sample_id] = {
      decision: decision, reason: reason || null, time: new Date().toISOString(),
      shard: p.shard, model_id: p.model_id, stratum: p.stratum
    };
    rejecting = false;
    move(1);
  }

  function move(step) {
    state.position = Math.min(Math.max(0, state.position + step), persons.length - 1);
    save();
    render();
  }

  function reviewDocument() {
    var h = data.review_header;
    var ids = Object.keys(state.decisions).sort().filter(function (id) {  // a hand-edited storage entry is left out
      var d = state.decisions[id];
      return d && typeof d.shard === "string" && (d.decision === "accept" || d.decision === "reject");
    });
    return {
      format: h.format, version: h.version, label_run: h.label_run,
      reviewer: state.reviewer, saved_at: new Date().toISOString(), sample: h.sample,
      decisions: ids.map(function (id) {
        var d = state.decisions[id];
        return { sample_id: id, shard: d.shard, model_id: d.model_id, decision: d.decision,
                 reason: d.decision === "reject" ? d.reason : null, time: d.time, stratum: d.stratum };
      })
    };
  }

  function download() {
    var text = JSON.stringify(reviewDocument(), null, 1) + "\n";
    var url = URL.createObjectURL(new Blob([text], { type: "application/json" }));
    var link = document.createElement("a");
    link.href = url;
    link.download = "review.json";
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(function () { URL.revokeObjectURL(url); }, 60000);
  }

  function text(value) {
    if (value === null || value === undefined) { return "\u2013"; }
    if (typeof value === "number") { return String(Number(value.toPrecision(4))); }
    return String(value);
  }

  function row(table, name, value) {
    var tr = table.insertRow();
    var th = document.createElement("th");
    th.textContent = name;
    tr.appendChild(th);
    tr.insertCell().textContent = text(value);
  }

  function render() {
    var p = current();
    var decided = persons.filter(function (q) { return state.decisions[q.sample_id]; });
    var accepted = decided.filter(function (q) { return state.decisions[q.sample_id].decision === "accept"; });
    $("progress").value = decided.length;
    $("count").textContent = decided.length + " / " + persons.length + " decided (" + accepted.length +
      " accepted, " + (decided.length - accepted.length) + " rejected)";
    if (!p) { return; }
    var d = state.decisions[p.sample_id];
    var image = $("view");
    image.src = view === "overlay" ? p.overlay : p.photo;
    image.alt = p.sample_id;
    image.className = d ? d.decision : "";
    $("caption").innerHTML = "";
    var sid = document.createElement("span");
    sid.className = "sid";
    sid.textContent = p.sample_id;
    $("caption").appendChild(document.createTextNode("person " + (state.position + 1) + " of " + persons.length +
      " \u00b7 " + (view === "overlay" ? "mesh and keypoints" : "photo") + " \u00b7 "));
    $("caption").appendChild(sid);
    if (!p.crop_found) { $("caption").appendChild(document.createTextNode(" \u00b7 image not found: grey")); }
    var verdict = $("verdict");
    verdict.className = d ? d.decision : "";
    verdict.textContent = d ? (d.decision === "accept" ? "accepted" : "rejected" +
      (d.reason ? ": " + reasonText[d.reason] : "")) : "not decided";
    $("reasons").hidden = !rejecting;
    $("details").hidden = !details;
    var table = $("facts");
    table.innerHTML = "";
    row(table, "stratum", p.stratum);
    row(table, "tier", p.tier);
    row(table, "confidence", p.confidence);
    row(table, "filter reasons", (p.reasons || []).join(", ") || null);
    row(table, "mesh in crop", p.mesh_in_crop === null ? null : Math.round(100 * p.mesh_in_crop) + " %");
    row(table, "shard", p.shard);
    row(table, "model", p.model_id);
    (p.signals || []).forEach(function (pair) { row(table, pair[0], pair[1]); });
    var marks = $("strip").children;
    for (var i = 0; i < marks.length; i++) {
      var m = state.decisions[persons[i].sample_id];
      marks[i].className = (m ? m.decision : "") + (i === state.position ? " current" : "");
    }
    var next = persons[state.position + 1];
    if (next) { new Image().src = view === "overlay" ? next.overlay : next.photo; }
    var body = document.body;
    body.setAttribute("data-position", String(state.position));
    body.setAttribute("data-decided", String(decided.length));
    body.setAttribute("data-view", view);
    body.setAttribute("data-ready", "1");
  }

  function onKey(event) {
    if (event.ctrlKey || event.metaKey || event.altKey || !persons.length) { return; }
    var key = event.key;
    if (event.target === $("reviewer")) {
      if (key === "Enter" || key === "Escape") { $("reviewer").blur(); event.preventDefault(); }
      return;
    }
    if (rejecting) {
      var index = "123456789".indexOf(key);
      if (index >= 0 && index < reasonNames.length) { decide("reject", reasonNames[index]); }
      else if (key === "Enter" || key === "r") { decide("reject", null); }
      else if (key === "Escape") { rejecting = false; render(); }
      else { return; }
      event.preventDefault();
      return;
    }
    switch (key) {
      case "a": decide("accept", null); break;
      case "r": rejecting = true; render(); break;
      case "s": case "ArrowRight": move(1); break;
      case "b": case "ArrowLeft": move(-1); break;
      case "u": delete state.decisions[current().sample_id]; save(); render(); break;
      case "o": view = view === "overlay" ? "photo" : "overlay"; render(); break;
      case "i": details = !details; render(); break;
      case "d": download(); break;
      case "n": $("reviewer").focus(); break;
      default: return;
    }
    event.preventDefault();
  }

  var list = $("reason-list");
  reasonNames.forEach(function (name) {
    var item = document.createElement("li");
    item.textContent = name.replace(/_/g, " ") + ": " + reasonText[name];
    list.appendChild(item);
  });
  var strip = $("strip");
  persons.forEach(function (p, i) {
    var mark = document.createElement("span");
    mark.title = p.sample_id;
    mark.addEventListener("click", function () { state.position = i; rejecting = false; save(); render(); });
    strip.appendChild(mark);
  });
  $("progress").max = persons.length;
  $("reviewer").value = state.reviewer;
  $("reviewer").addEventListener("input", function () { state.reviewer = $("reviewer").value; save(); });
  $("download").addEventListener("click", download);
  document.addEventListener("keydown", onKey);
  window.dpmeshReview = {
    reviewDocument: reviewDocument,
    state: function () { return JSON.parse(JSON.stringify(state)); }
  };
  save();
  render();
})();
"""
