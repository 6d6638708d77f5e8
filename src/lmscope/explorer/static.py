"""The explorer's CSS and JavaScript, inlined into every page so that an exported page needs nothing else.

The colour ramp for token activations is written twice, here in JavaScript (for live results) and in
``pages.act_color`` (for server-rendered examples); the two must give the same colour for the same value.
"""

CSS = """
:root { color-scheme: light; --ink: #1f2328; --muted: #59636e; --line: #e3e6ea; --bg: #f5f6f8;
  --accent: #c2410c; --link: #0b5cad; --card: #ffffff; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink);
  font: 14.5px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
a { color: var(--link); text-decoration: none; }
a:hover { text-decoration: underline; }
header.top { background: #16181d; color: #e8eaed; padding: 0 28px; height: 48px; display: flex;
  align-items: center; gap: 18px; }
header.top .brand { font-weight: 700; letter-spacing: 0.02em; color: #fff; }
header.top .brand b { color: #fb923c; }
header.top nav { color: #aab1bb; font-size: 0.93em; overflow: hidden; white-space: nowrap; text-overflow: ellipsis; }
header.top nav a { color: #d6dae0; }
header.top nav .sep { margin: 0 7px; color: #6b7280; }
main { max-width: 1280px; margin: 0 auto; padding: 22px 28px 60px; }
h1 { font-size: 1.6em; line-height: 1.25; margin: 0.1em 0 0.15em; }
h1 .kind { font-weight: 500; color: var(--muted); }
h2 { font-size: 1.02em; margin: 0 0 10px; text-transform: uppercase; letter-spacing: 0.04em; color: #374151; }
h3 { font-size: 0.95em; margin: 14px 0 6px; color: #374151; }
.subtitle { color: var(--muted); margin: 0 0 16px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 16px 18px;
  margin: 0 0 16px; box-shadow: 0 1px 2px rgba(16, 24, 40, 0.04); }
.grid { display: grid; grid-template-columns: minmax(320px, 400px) minmax(0, 1fr); gap: 16px; align-items: start; }
@media (max-width: 900px) { .grid { grid-template-columns: minmax(0, 1fr); } }
.chips { display: flex; flex-wrap: wrap; gap: 8px; margin: 10px 0 18px; }
.chip { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 6px 12px; }
.chip .k { display: block; font-size: 0.75em; text-transform: uppercase; letter-spacing: 0.05em; color: var(--muted); }
.chip .v { font-weight: 600; font-variant-numeric: tabular-nums; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 999px; font-size: 0.8em; font-weight: 600;
  background: #eef2ff; color: #3730a3; }
.badge.sae { background: #fff1e6; color: #9a3412; } .badge.neurons { background: #ecfdf5; color: #065f46; }
.badge.probe { background: #f0f9ff; color: #075985; } .badge.patching, .badge.das { background: #fdf4ff; color: #86198f; }
.badge.audit { background: #fef2f2; color: #991b1b; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
th, td { padding: 7px 10px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
th { font-size: 0.78em; text-transform: uppercase; letter-spacing: 0.04em; color: var(--muted); font-weight: 600; }
td.num, th.num { text-align: right; }
#units { width: auto; min-width: 640px; } #units td, #units th { padding: 6px 16px; }
tbody tr:hover td { background: #f9fafb; }
.muted { color: var(--muted); }
.mono, .tok, textarea, code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
figure { margin: 0; }
figure svg { width: 100%; height: auto; display: block; }
.example { font-size: 0.86em; line-height: 1.95; padding: 6px 0; border-bottom: 1px dashed var(--line); }
.example:last-child { border-bottom: 0; }
.example .meta { float: right; margin-left: 10px; font-family: system-ui, sans-serif; font-size: 0.92em; color: var(--muted); }
.tokens { white-space: pre-wrap; word-break: break-word; }
.tok { border-radius: 3px; padding: 1px 0; margin-right: 1px; cursor: default; white-space: pre; }
.tok:hover { outline: 1.5px solid #111827; }
.tok.peak { box-shadow: inset 0 -2px 0 #111827; font-weight: 600; }
.ell { color: #9ca3af; }
.toprow { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; margin-bottom: 16px; }
.toprow > .card { margin: 0; flex: 1 1 340px; min-width: 0; }
.toprow > .card.hist { flex: 1 1 520px; max-width: 660px; }
.toprow > .stack { flex: 1 1 260px; min-width: 0; display: flex; flex-direction: column; gap: 16px; }
.toprow > .stack > .card { margin: 0; }
.logits { display: grid; grid-template-columns: 1fr 1fr; gap: 16px; }
.logits h3 { margin-top: 0; }
.vrow { display: grid; grid-template-columns: minmax(3.5em, 1fr) minmax(24px, 56px) auto; gap: 8px; align-items: center;
  font-size: 0.86em; padding: 2px 0; }
.vrow .t { white-space: pre; overflow: hidden; text-overflow: ellipsis; }
.vrow .track { height: 8px; background: #f1f3f5; border-radius: 4px; overflow: hidden; }
.vrow .fill { display: block; height: 100%; border-radius: 4px; }
.vrow .fill.pos { background: #f97316; } .vrow .fill.neg { background: #3b82f6; }
.vrow .n { font-variant-numeric: tabular-nums; color: #374151; text-align: right; min-width: 4.5em; }
.small { font-size: 0.85em; margin: 0 0 8px; }
#extra table { font-size: 0.86em; } #extra td { padding: 3px 0; }
ul.plain { list-style: none; padding: 0; margin: 0; } ul.plain li { padding: 3px 0; border-bottom: 1px solid var(--line); }
ul.plain li:last-child { border-bottom: 0; }
form.live textarea { width: 100%; min-height: 72px; padding: 8px 10px; border: 1px solid #cfd4da; border-radius: 8px;
  font-size: 0.92em; resize: vertical; }
.row { display: flex; flex-wrap: wrap; gap: 10px; align-items: center; margin-top: 8px; }
button, .button { background: var(--accent); color: #fff; border: 0; border-radius: 7px; padding: 7px 14px;
  font-weight: 600; cursor: pointer; font-size: 0.92em; }
button.secondary { background: #374151; }
input[type=number], input[type=text], select { padding: 5px 8px; border: 1px solid #cfd4da; border-radius: 6px;
  font-size: 0.92em; }
input[type=number] { width: 90px; }
label { font-size: 0.88em; color: #374151; }
.result { margin-top: 12px; min-height: 1.5em; }
.result .tokens { font-size: 0.92em; line-height: 2; }
.steer { display: grid; grid-template-columns: 1fr 1fr; gap: 12px; margin-top: 10px; }
.steer > div { background: #f8fafc; border: 1px solid var(--line); border-radius: 8px; padding: 8px 10px; }
.steer pre { white-space: pre-wrap; word-break: break-word; margin: 4px 0 0; font-size: 0.88em; }
.error-box { background: #fef2f2; border: 1px solid #fecaca; color: #991b1b; border-radius: 8px; padding: 8px 12px; }
.note { background: #fffbeb; border: 1px solid #fde68a; border-radius: 8px; padding: 8px 12px; color: #78350f; }
.filters { display: flex; flex-wrap: wrap; gap: 12px; align-items: end; }
.filters label { display: flex; flex-direction: column; gap: 3px; }
.pager { display: flex; gap: 6px; align-items: center; margin-top: 12px; flex-wrap: wrap; }
.pager a, .pager span { padding: 3px 10px; border: 1px solid var(--line); border-radius: 6px; background: #fff; }
.pager .cur { background: #16181d; color: #fff; border-color: #16181d; }
.bar { display: inline-block; height: 8px; border-radius: 4px; background: #fb923c; vertical-align: middle; }
iframe.report { width: 100%; height: 78vh; border: 1px solid var(--line); border-radius: 10px; background: #fff; }
.error-page { max-width: 640px; margin: 60px auto; text-align: left; }
.error-page .code { font-size: 3em; font-weight: 800; color: #d1d5db; line-height: 1; }
.export-link { margin-left: auto; font-size: 0.85em; color: #d6dae0 !important; }
"""

JS = r"""
(function () {
  "use strict";
  function color(v, m) {
    if (!(m > 0)) m = 1;
    var t = Math.max(-1, Math.min(1, v / m));
    if (t >= 0) return "rgba(249, 115, 22, " + (0.85 * t).toFixed(3) + ")";
    return "rgba(37, 99, 235, " + (-0.85 * t).toFixed(3) + ")";
  }
  function shown(tok) { return tok.replace(/\n/g, "\u21b5").replace(/\t/g, "\u21e5"); }
  function renderTokens(el, tokens, acts, m) {
    el.textContent = "";
    var box = document.createElement("div");
    box.className = "tokens";
    var peak = 0;
    acts.forEach(function (a, i) { if (a > acts[peak]) peak = i; });
    tokens.forEach(function (t, i) {
      var s = document.createElement("span");
      s.className = "tok" + (i === peak && acts[i] > 0 ? " peak" : "");
      s.textContent = shown(t);
      s.style.background = color(acts[i], m);
      s.dataset.act = acts[i].toFixed(4);
      s.title = JSON.stringify(t) + "  activation " + acts[i].toFixed(3);
      box.appendChild(s);
    });
    el.appendChild(box);
  }
  function showError(el, msg) {
    el.textContent = "";
    var d = document.createElement("div");
    d.className = "error-box";
    d.textContent = msg;
    el.appendChild(d);
  }
  function post(url, body) {
    return fetch(url, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) })
      .then(function (r) {
        return r.json().catch(function () { return { error: { message: "the server answered " + r.status } }; })
          .then(function (data) {
            if (!r.ok) throw new Error((data.error && data.error.message) || ("the server answered " + r.status));
            return data;
          });
      });
  }
  var live = document.getElementById("live-form");
  if (live) {
    live.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var out = document.getElementById("live-result");
      var text = live.elements.text.value;
      out.innerHTML = '<span class="muted">running the model\u2026</span>';
      post(live.dataset.api, { text: text }).then(function (d) {
        var m = Math.max(parseFloat(live.dataset.max) || 0, Math.max.apply(null, d.acts.concat([0])));
        renderTokens(out, d.tokens, d.acts, m);
        var info = document.createElement("div");
        info.className = "muted";
        info.textContent = "max activation " + Math.max.apply(null, d.acts).toFixed(3) + " over " + d.tokens.length + " tokens";
        out.appendChild(info);
        if (window.history && history.replaceState) {
          history.replaceState(null, "", "?text=" + encodeURIComponent(text) + "#live");
        }
      }).catch(function (e) { showError(out, e.message); });
    });
  }
  var st = document.getElementById("steer-form");
  if (st) {
    st.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var out = document.getElementById("steer-result");
      out.innerHTML = '<span class="muted">generating\u2026</span>';
      post(st.dataset.api, {
        text: live ? live.elements.text.value : "",
        scale: parseFloat(st.elements.scale.value),
        n_tokens: parseInt(st.elements.n_tokens.value, 10)
      }).then(function (d) {
        out.textContent = "";
        var grid = document.createElement("div");
        grid.className = "steer";
        [["without steering", d.unsteered], ["steered (scale " + d.scale + " at " + d.site + ")", d.steered]]
          .forEach(function (pair) {
            var box = document.createElement("div");
            var h = document.createElement("div"); h.className = "muted"; h.textContent = pair[0];
            var p = document.createElement("pre"); p.textContent = pair[1].trim() ? pair[1] : "(no visible text)";
            box.appendChild(h); box.appendChild(p); grid.appendChild(box);
          });
        out.appendChild(grid);
      }).catch(function (e) { showError(out, e.message); });
    });
  }
})();
"""
