// guardian console: live pending approvals (server-sent events), decisions
// without a reload, countdowns. No dependencies.
(function () {
  "use strict";
  var csrf = document.body.dataset.csrf;
  var grace = parseFloat(document.body.dataset.grace || "0") * 1000;

  function toast(msg) {
    var t = document.getElementById("toast");
    if (!t) return;
    t.textContent = msg;
    t.classList.add("show");
    clearTimeout(t._h);
    t._h = setTimeout(function () { t.classList.remove("show"); }, 6000);
  }

  function fromHTML(html) {
    var tpl = document.createElement("template");
    tpl.innerHTML = html.trim();
    return tpl.content.firstElementChild;
  }

  function card(key) { return document.querySelector('.card[data-key="' + CSS.escape(key) + '"]'); }

  function upsert(key, html) {
    var list = document.getElementById("pending");
    if (!list) return;
    var el = fromHTML(html);
    var old = card(key);
    if (old) {
      // keep what the person was typing
      var reason = old.querySelector("input[name=reason]");
      var nr = el.querySelector("input[name=reason]");
      if (reason && nr) nr.value = reason.value;
      old.replaceWith(el);
    } else {
      list.appendChild(el);
    }
    bind(el);
    tick();
    document.getElementById("empty").hidden = true;
  }

  function gone(key, status, by, reason) {
    var old = card(key);
    if (old) old.remove();
    var list = document.getElementById("pending");
    var empty = document.getElementById("empty");
    if (list && empty) empty.hidden = list.children.length > 0;
    var recent = document.getElementById("recent");
    if (recent) {
      var li = document.createElement("li");
      li.dataset.key = key;
      li.className = "status-" + status;
      li.textContent = key + " " + status + (by ? " by " + by : "") + (reason ? ": " + reason : "");
      recent.prepend(li);
    }
    toast(key + " " + status + (by ? " by " + by : ""));
  }

  function bind(card) {
    var form = card.querySelector("form.decide");
    if (!form || form._bound) return;
    form._bound = true;
    form.addEventListener("submit", function (e) {
      e.preventDefault();
      var err = form.querySelector(".error");
      if (!e.submitter || !e.submitter.value) {
        // Enter in a field: never approve (or deny) by accident
        err.textContent = "Choose Approve, Deny or Extend (Tab to the button, then Enter).";
        err.hidden = false;
        return;
      }
      var action = e.submitter.value;
      if (form.dataset.busy) return; // a double click sends once
      form.dataset.busy = "1";
      var buttons = form.querySelectorAll("button");
      buttons.forEach(function (b) { b.disabled = true; });
      var body = new URLSearchParams(new FormData(form));
      body.set("action", action);
      fetch("/ui/decide", {
        method: "POST",
        headers: { "X-CSRF-Token": csrf, "Content-Type": "application/x-www-form-urlencoded" },
        body: body,
        credentials: "same-origin"
      }).then(function (r) {
        return r.json().then(function (j) { return { ok: r.ok, j: j }; });
      }).then(function (res) {
        if (!res.ok) {
          err.textContent = res.j.error || "refused";
          err.hidden = false;
          return;
        }
        err.hidden = true;
        if (res.j.status === "pending" && res.j.row) upsert(res.j.key, res.j.row);
        else gone(res.j.key, res.j.status, document.getElementById("actor") ? document.getElementById("actor").textContent : "", "");
      }).catch(function (x) {
        err.textContent = "no answer from guardian: " + x;
        err.hidden = false;
      }).finally(function () {
        delete form.dataset.busy;
        buttons.forEach(function (b) { b.disabled = false; });
      });
    });
  }

  function fmt(ms) {
    var s = Math.max(0, Math.round(ms / 1000));
    var h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
    return (h ? h + "h " : "") + (h || m ? m + "m " : "") + r + "s";
  }

  function tick() {
    var now = Date.now();
    document.querySelectorAll(".card[data-expires]").forEach(function (card) {
      var exp = Date.parse(card.dataset.expires);
      var left = exp - now;
      var cd = card.querySelector(".countdown");
      var g = card.querySelector(".badge.grace");
      if (left > 0) {
        cd.textContent = "expires in " + fmt(left);
        if (g) g.hidden = true;
      } else {
        cd.textContent = "expired " + fmt(-left) + " ago";
        if (g) g.hidden = -left > grace;
      }
    });
  }

  document.querySelectorAll(".card").forEach(bind);
  tick();
  setInterval(tick, 1000);

  if (document.getElementById("pending") && window.EventSource) {
    var es = new EventSource("/ui/events");
    es.addEventListener("approval", function (e) {
      var d = JSON.parse(e.data);
      if (d.status === "pending" && d.row) upsert(d.key, d.row);
      else if (d.status !== "pending") gone(d.key, d.status, d.by, d.reason);
    });
    var lost = false;
    es.addEventListener("open", function () {
      // After a lost stream, events may have gone by: start over.
      if (lost) { location.reload(); return; }
      document.body.classList.add("live");
    });
    es.addEventListener("error", function () { lost = true; document.body.classList.remove("live"); });
  }
})();
