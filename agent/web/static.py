"""The page's stylesheet and script, served from the gateway (``/static/...``).

Kept as strings here rather than package data so the wheel needs no extra files. The
Content-Security-Policy allows scripts and styles only from the gateway itself (no inline
code), so these are the only ones that run. Colours meet WCAG AA contrast on white
(text #1a1a1a, links #0b4f9c, "bad" #a4001d, "ok" #0a6b2a: all above 4.5:1).
"""

from __future__ import annotations

CSS = """\
:root { color-scheme: light; }
body { font-family: system-ui, sans-serif; color: #1a1a1a; background: #fff; margin: 0; line-height: 1.45; }
main { padding: 0 1rem 2rem; max-width: 75rem; }
main:focus { outline: none; }
header { display: flex; flex-wrap: wrap; justify-content: space-between; align-items: center;
         gap: .5rem; padding: .5rem 1rem; background: #eef2f7; border-bottom: 1px solid #b8c4d4; }
a { color: #0b4f9c; }
a:focus, button:focus, input:focus, summary:focus { outline: 3px solid #c75000; outline-offset: 2px; }
.skip { position: absolute; left: -999px; top: 0; background: #fff; padding: .5rem; }
.skip:focus { left: .5rem; z-index: 10; }
.sr-only { position: absolute; width: 1px; height: 1px; overflow: hidden; clip: rect(0 0 0 0); white-space: nowrap; }
.lang ul { list-style: none; display: flex; gap: 1rem; margin: 0; padding: 0; }
.lang a[aria-current] { font-weight: bold; text-decoration: none; color: #1a1a1a; }
button { font: inherit; padding: .35rem .9rem; border: 1px solid #0b4f9c; background: #0b4f9c; color: #fff;
         border-radius: 3px; cursor: pointer; }
.logout button { background: #fff; color: #0b4f9c; }
label { display: block; font-weight: 600; }
.refresh-ctl label { display: inline; font-weight: normal; }
input[type=text], input[type=password] { font: inherit; padding: .35rem; border: 1px solid #5a6270;
         width: 100%; max-width: 20rem; box-sizing: border-box; }
.error { color: #a4001d; font-weight: 600; }
.note { color: #0a6b2a; }
.ok { color: #0a6b2a; font-weight: 600; }
.bad { color: #a4001d; font-weight: 700; }
.unknown { color: #4a4a4a; }
table { border-collapse: collapse; }
th, td { text-align: left; padding: .25rem .6rem; border-bottom: 1px solid #c8ced8; }
.scroll { overflow-x: auto; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: .2rem 1rem; }
dt { font-weight: 600; }
dd { margin: 0; }
.charts { display: flex; flex-wrap: wrap; gap: 1rem; }
figure { margin: 0; }
svg.chart { max-width: 100%; height: auto; }
svg.chart .plot { fill: #fafbfc; stroke: #8a94a3; }
svg.chart .line { fill: none; stroke: #0b4f9c; stroke-width: 1.5; }
svg.chart .pt { fill: #0b4f9c; }
svg.chart .axis { font-size: 10px; fill: #333; }
.updated { color: #4a4a4a; }
"""

# Auto-refresh: every N seconds fetch the page again and swap only the #live region, so the
# header, the checkbox and whatever the keyboard focus is on stay put; open data tables stay
# open. A redirect (session expired) reloads the page, which then shows the sign-in form.
JS = """\
(function () {
  "use strict";
  var box = document.getElementById("auto-refresh");
  if (!box) { return; }
  document.getElementById("refresh-ctl").hidden = false;
  var seconds = parseInt(box.getAttribute("data-seconds"), 10) || 10;
  function swap(html) {
    var doc = new DOMParser().parseFromString(html, "text/html");
    var fresh = doc.getElementById("live");
    var cur = document.getElementById("live");
    if (!fresh || !cur) { return; }
    var active = document.activeElement;
    var activeId = active && cur.contains(active) ? active.id : null;
    var open = {};
    cur.querySelectorAll("details[id]").forEach(function (d) { open[d.id] = d.open; });
    fresh = document.adoptNode(fresh);
    fresh.querySelectorAll("details[id]").forEach(function (d) { if (open[d.id]) { d.open = true; } });
    cur.replaceWith(fresh);
    if (activeId) {
      var el = document.getElementById(activeId);
      if (el) { el.focus(); }
    }
  }
  setInterval(function () {
    if (!box.checked || document.hidden) { return; }
    fetch(location.pathname, { credentials: "same-origin", redirect: "follow" }).then(function (r) {
      if (r.redirected || r.status !== 200) { location.reload(); return null; }
      return r.text();
    }).then(function (html) { if (html) { swap(html); } }).catch(function () { /* offline: try again later */ });
  }, seconds * 1000);
}());
"""
