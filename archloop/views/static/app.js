// The dashboard's experiment page: the plots (plots.js) and the tables from /experiments/<id>/live.json
// (the report document and the server-rendered sections), and live updates from /experiments/<id>/events
// (server-sent events forwarded from NATS): each cycle event is listed and the page's sections are read
// again in one request, without a page reload.
(function () {
  const section = document.getElementById("experiment");
  if (!section) return;
  const id = section.dataset.experiment;
  const base = "/experiments/" + encodeURIComponent(id);

  async function refresh() {
    const answer = await fetch(base + "/live.json");
    if (!answer.ok) return;
    const live = await answer.json();
    for (const [name, html] of Object.entries(live.html)) {
      const node = document.getElementById(name);
      if (node) node.innerHTML = html;
    }
    ArchLoopPlots.draw(live.doc);
  }

  function listEvent(event) {
    const item = document.createElement("li");
    item.className = "event";
    const { kind, cycle, ...rest } = event;
    item.textContent = "cycle " + cycle + " " + kind + " " + JSON.stringify(rest);
    document.getElementById("events").prepend(item);
  }

  refresh();
  const state = document.getElementById("live-state");
  if (section.dataset.live === "on") {
    const source = new EventSource(base + "/events");
    source.addEventListener("ready", () => { state.textContent = "Live: cycle events appear here as they happen."; });
    source.addEventListener("cycle", message => {
      const event = JSON.parse(message.data);
      listEvent(event);
      refresh();
      if (event.kind === "experiment_completed" || event.kind === "experiment_failed") {
        source.close();  // nothing more will come: no reconnecting to a dashboard that may end with the run
        state.textContent = "The experiment has ended (" + event.kind.replace("experiment_", "") + "); live updates stopped.";
      }
    });
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED) return;
      state.textContent = "Live updates interrupted; reconnecting… (a dashboard served by `archloop run` ends with the run)";
    };
  } else {
    setInterval(refresh, 10000);
  }
})();
