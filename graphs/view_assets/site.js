// Index filters: show the episodes whose culture, status, model, run, verdict and judge labels match every chosen
// value; the choice is kept in the address (?culture=CHN&status=done) so a filtered view can be shared.
(function () {
  "use strict";
  const selects = Array.from(document.querySelectorAll("#filters select"));
  const rows = Array.from(document.querySelectorAll("#episodes tr.episode"));
  const shown = document.getElementById("shown");
  if (!selects.length) return;

  function matches(row, key, value) {
    if (!value) return true;
    const field = key.replace(/-(\w)/g, (_, c) => c.toUpperCase());  // judge-label -> judgeLabel
    const held = row.dataset[field];
    return held.startsWith("[") ? JSON.parse(held).includes(value) : held === value;
  }

  function apply() {
    const chosen = selects.map((s) => [s.dataset.key, s.value]);
    let n = 0;
    for (const row of rows) {
      const keep = chosen.every(([key, value]) => matches(row, key, value));
      row.hidden = !keep;
      if (keep) n += 1;
    }
    shown.textContent = n + " of " + rows.length + " shown";
    const params = new URLSearchParams();
    for (const [key, value] of chosen) if (value) params.set(key, value);
    const query = params.toString();
    history.replaceState(null, "", query ? "?" + query : location.pathname);
  }

  const initial = new URLSearchParams(location.search);
  for (const s of selects) {
    const wanted = initial.get(s.dataset.key);
    if (wanted && Array.from(s.options).some((o) => o.value === wanted)) s.value = wanted;
    s.addEventListener("change", apply);
  }
  apply();
})();
