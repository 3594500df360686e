// Index filters: show the episodes whose culture, status, model and judge verdicts match every chosen
// value; the choice is kept in the address (?culture=CHN&status=done) so a filtered view can be shared.
(function () {
  "use strict";
  const selects = Array.from(document.querySelectorAll("#filters select"));
  const rows = Array.from(document.querySelectorAll("#episodes tr.episode"));
  const shown = document.getElementById("shown");
  if (!selects.length) return;

  function matches(row, key, value) {
    if (!value) return true;
    if (key === "judge") return JSON.parse(row.dataset.judge).includes(value);
    return row.dataset[key] === value;
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
