// The experiment page: plots from /experiments/<id>/cycles.json (Plotly, served by the dashboard),
// live updates from /experiments/<id>/events (server-sent events forwarded from NATS): each cycle
// event is listed and the table and plots are read again, without a page reload.
(function () {
  const section = document.getElementById("experiment");
  if (!section) return;
  const id = section.dataset.experiment;
  const base = "/experiments/" + encodeURIComponent(id);
  const layout = (title, y) => ({ title: { text: title, font: { size: 14 } }, margin: { l: 50, r: 14, t: 36, b: 40 },
    xaxis: { title: { text: "cycle" }, dtick: 1 }, yaxis: { title: { text: y } }, legend: { orientation: "h", y: -0.25 } });
  const config = { displaylogo: false, responsive: true };

  function plot(cycles) {
    if (!cycles.length) return;
    const x = cycles.map(c => c.cycle);
    const v = cycles.map(c => c.valid_fraction * 100);
    Plotly.react("plot-valid", [{ x, y: v, type: "scatter", mode: "lines+markers", name: "valid %",
      error_y: { type: "data", symmetric: false, array: cycles.map(c => (c.valid_fraction_ci_high - c.valid_fraction) * 100),
        arrayminus: cycles.map(c => (c.valid_fraction - c.valid_fraction_ci_low) * 100) } }],
      { ...layout("Valid rate (Wilson 95 %)", "valid %"), yaxis: { title: { text: "valid %" }, range: [0, 100] } }, config);
    Plotly.react("plot-accuracy", [
      { x, y: cycles.map(c => c.best_accuracy), mode: "lines+markers", name: "best" },
      { x, y: cycles.map(c => c.mean_accuracy), mode: "lines+markers", name: "mean",
        error_y: { type: "data", symmetric: false, array: cycles.map(c => c.mean_accuracy_ci_high == null ? 0 : c.mean_accuracy_ci_high - c.mean_accuracy),
          arrayminus: cycles.map(c => c.mean_accuracy_ci_low == null ? 0 : c.mean_accuracy - c.mean_accuracy_ci_low) } },
      { x, y: cycles.map(c => c.median_accuracy), mode: "lines+markers", name: "median" },
    ], { ...layout("First-epoch accuracy of valid candidates", "accuracy"), yaxis: { title: { text: "accuracy" }, range: [0, 1] } }, config);
    Plotly.react("plot-dynamics", [
      { x, y: cycles.map(c => c.elite_concentration), mode: "lines+markers", name: "C_t" },
      { x, y: cycles.map(c => c.mean_quality_smoothed), mode: "lines+markers", name: "Q_t (3-cycle)" },
    ], { ...layout("Loop dynamics", "share / accuracy"), yaxis: { title: { text: "share / accuracy" }, range: [0, 1] } }, config);
  }

  async function refresh() {
    const [table, data] = await Promise.all([fetch(base + "/table"), fetch(base + "/cycles.json")]);
    if (table.ok) document.getElementById("table").innerHTML = await table.text();
    if (data.ok) plot(await data.json());
  }

  function listEvent(event) {
    const item = document.createElement("li");
    item.className = "event";
    const { kind, cycle, ...rest } = event;
    item.textContent = "cycle " + cycle + " " + kind + " " + JSON.stringify(rest);
    const list = document.getElementById("events");
    list.prepend(item);
  }

  fetch(base + "/cycles.json").then(r => r.ok ? r.json() : []).then(plot);
  const state = document.getElementById("live-state");
  if (section.dataset.live === "on") {
    const source = new EventSource(base + "/events");
    source.addEventListener("ready", () => { state.textContent = "Live: cycle events appear here as they happen."; });
    source.addEventListener("cycle", message => { listEvent(JSON.parse(message.data)); refresh(); });
    source.onerror = () => { state.textContent = "Live updates interrupted; reconnecting…"; };
  } else {
    setInterval(refresh, 10000);
  }
})();
