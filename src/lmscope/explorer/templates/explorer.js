(function () {
  "use strict";
  // The token ramp of lmscope.report.tokens (RAMP), handed over by the page: one ramp for every page.
  var RAMP = {{ ramp|tojson }};
  function color(v, m) {
    if (!(m > 0)) m = 1;
    var t = isFinite(v) ? Math.max(-1, Math.min(1, v / m)) : 0;
    var rgb = t >= 0 ? RAMP.positive : RAMP.negative;
    return "rgba(" + rgb.join(", ") + ", " + (RAMP.max_alpha * Math.abs(t)).toFixed(3) + ")";
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
