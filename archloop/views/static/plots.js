// The plots of an experiment and of a comparison, drawn with Plotly from the report document
// (services.controller.report.report_document): the same code on the dashboard's live page and in the
// static report. A plot with nothing to show says so instead of drawing empty axes.
window.ArchLoopPlots = (function () {
  const config = { displaylogo: false, responsive: true };
  const layout = (title, x, y, extra) => Object.assign({
    title: { text: title, font: { size: 14 } }, height: 360, margin: { l: 54, r: 14, t: 36, b: 96 },
    xaxis: { title: { text: x } }, yaxis: { title: { text: y } },
    legend: { orientation: "h", x: 0, y: -0.3, yanchor: "top", font: { size: 11 } },
  }, extra || {});
  const byCycle = { dtick: 1, title: { text: "cycle" } };
  const unit = text => ({ title: { text }, range: [0, 1] });
  // an asymmetric error bar from an interval (null ends: no bar)
  const bar = (rows, key, low, high, scale) => ({
    type: "data", symmetric: false,
    array: rows.map(r => r[high] == null || r[key] == null ? 0 : (r[high] - r[key]) * (scale || 1)),
    arrayminus: rows.map(r => r[low] == null || r[key] == null ? 0 : (r[key] - r[low]) * (scale || 1)),
  });

  function empty(id, title, words) {
    const node = document.getElementById(id);
    if (!node) return;
    Plotly.purge(node);
    node.innerHTML = "";
    const heading = document.createElement("p");
    heading.className = "plot-title";
    heading.textContent = title;
    const note = document.createElement("p");
    note.className = "empty plot-empty";
    note.textContent = words;
    node.append(heading, note);
  }

  function show(id, traces, plotLayout) {
    const node = document.getElementById(id);
    if (!node) return;
    if (!node.classList.contains("js-plotly-plot")) node.innerHTML = "";
    Plotly.react(node, traces, plotLayout, config);
  }

  function draw(doc) {
    const cycles = doc.cycles || [];
    const x = cycles.map(c => c.cycle);
    if (!cycles.length) {
      for (const [id, title] of [["plot-valid", "Valid rate"], ["plot-accuracy", "Accuracy"], ["plot-dynamics", "Loop dynamics"],
        ["plot-diversity", "Diversity"], ["plot-creativity", "New architectures"]]) empty(id, title, "No cycle yet.");
    } else {
      show("plot-valid", [{ x, y: cycles.map(c => c.valid_fraction * 100), mode: "lines+markers", name: "valid %",
        error_y: bar(cycles, "valid_fraction", "valid_ci_low", "valid_ci_high", 100) }],
        layout("Valid rate (Wilson 95 %)", "cycle", "valid %", { xaxis: byCycle, yaxis: { title: { text: "valid %" }, range: [0, 100] } }));
      show("plot-accuracy", [
        { x, y: cycles.map(c => c.best_accuracy), mode: "lines+markers", name: "best" },
        { x, y: cycles.map(c => c.mean_accuracy), mode: "lines+markers", name: "mean (t 95 %)",
          error_y: bar(cycles, "mean_accuracy", "mean_ci_low", "mean_ci_high") },
        { x, y: cycles.map(c => c.median_accuracy), mode: "lines+markers", name: "median" },
        { x: [x[0] - 0.3, x[x.length - 1] + 0.3], y: [doc.threshold, doc.threshold], mode: "lines", name: "τ",
          line: { dash: "dash", color: "#888" } },
      ], layout("First-epoch accuracy of valid candidates", "cycle", "accuracy", { xaxis: byCycle, yaxis: unit("accuracy") }));
      show("plot-dynamics", [
        { x, y: cycles.map(c => c.elite_concentration), mode: "lines+markers", name: "C_t (Wilson 95 %)",
          error_y: bar(cycles, "elite_concentration", "elite_ci_low", "elite_ci_high") },
        { x, y: cycles.map(c => c.mean_quality), mode: "lines+markers", name: "Q_t (t 95 %)",
          error_y: bar(cycles, "mean_quality", "mean_quality_ci_low", "mean_quality_ci_high") },
        { x, y: cycles.map(c => c.mean_quality_smoothed), mode: "lines", name: "Q_t, 3-cycle", line: { dash: "dot" } },
      ], layout("Loop dynamics (CT §4)", "cycle", "share / accuracy", { xaxis: byCycle, yaxis: unit("share / accuracy") }));
      show("plot-diversity", [
        { x, y: cycles.map(c => c.valid_wiring_share), mode: "lines+markers", name: "distinct wirings (valid)" },
        { x, y: cycles.map(c => c.admitted_mean_j_gen), mode: "lines+markers", name: "mean J_gen (admitted)" },
        { x, y: cycles.map(c => c.admitted_cells), mode: "lines+markers", name: "archive cells (admitted)", yaxis: "y2",
          line: { dash: "dot" } },
      ], layout("Diversity", "cycle", "share / Jaccard", { xaxis: byCycle, yaxis: unit("share / Jaccard"),
        yaxis2: { title: { text: "cells" }, overlaying: "y", side: "right", rangemode: "tozero", dtick: 1 }, margin: { l: 54, r: 48, t: 36, b: 96 } }));
      drawCreativity(cycles);
    }
    drawNovelty(doc);
    drawProxy(doc);
  }

  // issue 34: the wiring-new share of the valid per cycle, and distinct wiring / best accuracy against evaluations
  function drawCreativity(cycles) {
    const recorded = cycles.filter(c => c.wiring_recorded);
    if (!recorded.length) { empty("plot-creativity", "New architectures", "No architecture recorded (architecture_novelty off)."); return; }
    const evaluations = cycles.map(c => c.evaluations_total);
    show("plot-creativity", [
      { x: recorded.map(c => c.evaluations_total), y: recorded.map(c => c.wiring_new_valid_share), mode: "lines+markers",
        name: "wiring-new share of valid (Wilson 95 %)", error_y: bar(recorded, "wiring_new_valid_share", "wiring_new_valid_ci_low", "wiring_new_valid_ci_high") },
      { x: evaluations, y: cycles.map(c => c.best_accuracy_so_far), mode: "lines+markers", name: "best accuracy so far" },
      { x: evaluations, y: cycles.map(c => c.distinct_wiring_total), mode: "lines+markers", name: "distinct wiring hashes", yaxis: "y2",
        line: { dash: "dot" } },
    ], layout("New architectures against evaluations", "evaluations", "share / accuracy", { yaxis: unit("share / accuracy"),
      yaxis2: { title: { text: "distinct wiring" }, overlaying: "y", side: "right", rangemode: "tozero" }, margin: { l: 54, r: 48, t: 36, b: 96 } }));
  }

  function drawNovelty(doc) {
    const novelty = doc.novelty || { cycle: [] };
    const traces = [["j_train", "J to the corpus"], ["j_gen", "J to the cycle's earlier"], ["j_struct_train", "architecture J to the corpus"]]
      .map(([key, name]) => ({ x: (novelty[key] || []).filter(v => v != null), type: "histogram", name, opacity: 0.6,
        xbins: { start: 0, end: 1.0001, size: 0.05 } }))
      .filter(t => t.x.some(v => v > 0));  // a channel that measured nothing (all 0: structural off) is left out
    if (!traces.length) { empty("plot-novelty", "Novelty", "No novelty figure yet."); return; }
    traces.push({ x: [doc.novelty_threshold, doc.novelty_threshold], y: [0, 1], yaxis: "y2", mode: "lines", name: "τ_nov",
      line: { dash: "dash", color: "#b3261e" } });
    show("plot-novelty", traces, layout("Novelty: nearest-neighbour Jaccard", "estimated Jaccard", "candidates",
      { barmode: "overlay", xaxis: { title: { text: "estimated Jaccard" }, range: [0, 1] },
        yaxis2: { overlaying: "y", range: [0, 1], visible: false } }));
  }

  function drawProxy(doc) {
    const audits = Object.entries(doc.proxy_audit || {}).filter(([, a]) => a.points && a.points.length);
    if (!audits.length) { empty("plot-proxy", "Proxy vs promoted", "No promoted candidate yet."); return; }
    const epochs = audits[0][1].epochs;
    const traces = audits.map(([cycle, a]) => ({ x: a.points.map(p => p[1]), y: a.points.map(p => p[2]), mode: "markers",
      name: "cycle " + cycle + " (ρ " + (a.spearman == null ? "–" : a.spearman.toFixed(2)) + ")", text: a.points.map(p => p[0]),
      hovertemplate: "%{text}<br>epoch 1 %{x:.3f}<br>promoted %{y:.3f}<extra></extra>" }));
    traces.push({ x: [0, 1], y: [0, 1], mode: "lines", name: "y = x", line: { dash: "dot", color: "#999" } });
    show("plot-proxy", traces, layout("Proxy vs longer training", "first-epoch accuracy (the proxy)",
      "accuracy after " + epochs + " epochs", { xaxis: { title: { text: "first-epoch accuracy (the proxy)" }, range: [0, 1] },
        yaxis: unit("accuracy after " + epochs + " epochs") }));
  }

  // several experiments' cycle summaries, in the table's order: [{ experiment, cycles: [CycleSummary as JSON, …] }, …]
  function compare(series) {
    const line = (key, scale) => series.map(s => ({ x: s.cycles.map(c => c.cycle), y: s.cycles.map(c => c[key] * (scale || 1)),
      mode: "lines+markers", name: s.experiment }));
    show("plot-compare-valid", line("valid_fraction", 100), layout("Valid rate", "cycle", "valid %",
      { xaxis: byCycle, yaxis: { title: { text: "valid %" }, range: [0, 100] } }));
    show("plot-compare-accuracy", line("mean_accuracy"), layout("Mean first-epoch accuracy", "cycle", "accuracy",
      { xaxis: byCycle, yaxis: unit("accuracy") }));
    const best = series.map(s => ({ x: s.cycles.map(c => c.evaluations_total), y: s.cycles.map(c => c.best_accuracy_so_far || null),
      mode: "lines+markers", line: { shape: "hv" }, name: s.experiment }));
    show("plot-compare-best", best, layout("Best so far against evaluations", "evaluations (trained candidates)",
      "first-epoch accuracy", { yaxis: unit("first-epoch accuracy") }));
    show("plot-compare-dynamics", line("elite_concentration"), layout("C_t", "cycle", "share ≥ τ",
      { xaxis: byCycle, yaxis: unit("share ≥ τ") }));
  }

  return { draw, compare };
})();
