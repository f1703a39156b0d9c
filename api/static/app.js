// fleetstream control tower: a live map of the fleet, its exceptions and KPIs.
// Everything comes from this server: the API (/v1), the live stream (/v1/stream, Server-Sent
// Events read with fetch so the token travels in a header), the base map (/map/roads.geojson,
// roads of the OSM extract on disk) and the libraries (/vendor, installed from npm at set-up).
(function () {
  "use strict";

  // ------------------------------------------------------------------ token
  // Read once from ?token=..., kept in this tab's session, removed from the address bar.
  const params = new URLSearchParams(location.search);
  if (params.get("token")) {
    sessionStorage.setItem("fleetstream.token", params.get("token"));
    params.delete("token");
    const rest = params.toString();
    history.replaceState(null, "", location.pathname + (rest ? "?" + rest : "") + location.hash);
  }
  const token = sessionStorage.getItem("fleetstream.token");

  const COLORS = { moving: "#16a34a", stopped: "#2563eb", late: "#d97706", alert: "#dc2626", unknown: "#94a3b8" };
  const TYPE_LABEL = {
    gps_jump: "GPS jump", unplanned_dwell: "Unplanned stop", long_dwell: "Long dwell", route_drift: "Off route",
    temp_excursion: "Temperature", sensor_fault: "Sensor fault", door_open_away: "Door opened away",
    door_open_too_long: "Door open too long", offline: "Offline", predicted_late: "Predicted late",
  };
  const STATUS_LABEL = {
    on_time: "on time", early: "early", late: "late", done: "done", predicted_late: "predicted late",
    on_track: "on track", pending: "pending",
  };
  const state = {
    tenant: null, role: null,
    vehicles: new Map(),   // vehicle id -> /v1/vehicles row
    alerts: new Map(),     // alert id -> alert document (open, not closed)
    selected: null, plan: null, track: null,
    hex: "off", cells: [],
    lastEventId: null, streamOpen: false, stats: { events: 0 },
  };
  const $ = (id) => document.getElementById(id);

  function banner(text) {
    const el = $("banner");
    el.hidden = !text;
    el.textContent = text || "";
  }

  async function api(path, options) {
    const response = await fetch(path, Object.assign({}, options, {
      headers: Object.assign({ Authorization: "Bearer " + token }, (options || {}).headers || {}),
    }));
    if (response.status === 401) {
      banner("This page needs a valid token: open it as /?token=… (fleetstream token add TENANT).");
      throw new Error("unauthorised");
    }
    if (!response.ok) throw new Error(path + ": HTTP " + response.status);
    return response.json();
  }

  // ------------------------------------------------------------------ formatting
  const timeFmt = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", hourCycle: "h23" });
  const hhmm = (iso) => (iso ? timeFmt.format(new Date(iso)) : "–");
  function ago(iso) {
    if (!iso) return "";
    const s = Math.max(0, (Date.now() - new Date(iso).getTime()) / 1000);
    if (s < 90) return Math.round(s) + " s";
    if (s < 5400) return Math.round(s / 60) + " min";
    if (s < 172800) return Math.round(s / 3600) + " h";
    return Math.round(s / 86400) + " d";
  }
  const esc = (text) => String(text == null ? "" : text).replace(/[&<>"']/g, (c) => "&#" + c.charCodeAt(0) + ";");

  // ------------------------------------------------------------------ map
  const map = new maplibregl.Map({
    container: "map",
    style: {
      version: 8,
      sources: {},
      layers: [{ id: "background", type: "background", paint: { "background-color": "#e9edf1" } }],
    },
    center: [24.94, 60.17],
    zoom: 12.5,
    attributionControl: { compact: false, customAttribution: "Roads © OpenStreetMap contributors (ODbL)" },
    fadeDuration: 0,
  });
  map.addControl(new maplibregl.NavigationControl({ showCompass: false }), "top-right");
  const empty = () => ({ type: "FeatureCollection", features: [] });
  let mapReady = false;

  map.on("load", () => {
    map.addSource("roads", { type: "geojson", data: empty() });
    map.addSource("cells", { type: "geojson", data: empty() });
    map.addSource("route", { type: "geojson", data: empty() });
    map.addSource("track", { type: "geojson", data: empty() });
    map.addSource("stops", { type: "geojson", data: empty() });
    map.addSource("vehicles", { type: "geojson", data: empty() });
    map.addLayer({ id: "cells", type: "fill", source: "cells",
      paint: { "fill-color": ["interpolate", ["linear"], ["get", "v"], 0, "#fef9c3", 0.5, "#fb923c", 1, "#b91c1c"],
               "fill-opacity": 0.55, "fill-outline-color": "rgba(255,255,255,0.6)" } });
    map.addLayer({ id: "roads-minor", type: "line", source: "roads", filter: ["==", ["get", "class"], "minor"],
      paint: { "line-color": "#ffffff", "line-width": ["interpolate", ["linear"], ["zoom"], 11, 0.6, 16, 4] } });
    map.addLayer({ id: "roads-major", type: "line", source: "roads", filter: ["==", ["get", "class"], "major"],
      paint: { "line-color": "#fbfbfb", "line-width": ["interpolate", ["linear"], ["zoom"], 11, 1.4, 16, 8] } });
    map.addLayer({ id: "roads-major-casing", type: "line", source: "roads", filter: ["==", ["get", "class"], "major"],
      paint: { "line-color": "#c9d1db", "line-width": ["interpolate", ["linear"], ["zoom"], 11, 0.4, 16, 1] } }, "roads-major");
    map.addLayer({ id: "route", type: "line", source: "route",
      paint: { "line-color": "#0f766e", "line-width": 3, "line-opacity": 0.55, "line-dasharray": [2, 1.5] } });
    map.addLayer({ id: "track", type: "line", source: "track",
      paint: { "line-color": "#1c2430", "line-width": 2.5, "line-opacity": 0.75 } });
    map.addLayer({ id: "stops", type: "circle", source: "stops",
      paint: { "circle-radius": 6, "circle-color": ["match", ["get", "status"],
        "late", COLORS.alert, "predicted_late", COLORS.late, "on_time", COLORS.moving, "early", COLORS.moving,
        "done", COLORS.moving, "#ffffff"], "circle-stroke-color": "#0f766e", "circle-stroke-width": 2 } });
    map.addLayer({ id: "vehicles", type: "circle", source: "vehicles",
      paint: {
        "circle-radius": ["case", ["get", "selected"], 9, 6.5],
        "circle-color": ["match", ["get", "state"], "moving", COLORS.moving, "stopped", COLORS.stopped,
          "late", COLORS.late, "alert", COLORS.alert, COLORS.unknown],
        "circle-stroke-color": ["case", ["get", "selected"], "#1c2430", "#ffffff"],
        "circle-stroke-width": ["case", ["get", "selected"], 3, 2],
      } });
    map.on("click", "vehicles", (e) => { if (e.features.length) select(e.features[0].properties.vehicle); });
    map.on("mouseenter", "vehicles", () => { map.getCanvas().style.cursor = "pointer"; });
    map.on("mouseleave", "vehicles", () => { map.getCanvas().style.cursor = ""; });
    mapReady = true;
    loadRoads();
    drawVehicles();
  });

  async function loadRoads() {
    try {
      const response = await fetch("/map/roads.geojson");
      if (!response.ok) return;
      const roads = await response.json();
      map.getSource("roads").setData(roads);
      if (roads.bbox && !state.fitted) {
        map.fitBounds([[roads.bbox[0], roads.bbox[1]], [roads.bbox[2], roads.bbox[3]]], { padding: 30, duration: 0 });
      }
    } catch (err) { /* the page works without a base map */ }
  }

  // the selected vehicle first so it is drawn on top
  let drawQueued = false;
  function drawVehicles() {
    if (drawQueued) return;
    drawQueued = true;
    requestAnimationFrame(() => {
      drawQueued = false;
      if (!mapReady) return;
      const features = [];
      for (const v of state.vehicles.values()) {
        if (v.lat == null || v.lon == null) continue;
        features.push({ type: "Feature", geometry: { type: "Point", coordinates: [v.lon, v.lat] },
          properties: { vehicle: v.vehicle, state: colourState(v), selected: v.vehicle === state.selected } });
      }
      features.sort((a, b) => a.properties.selected - b.properties.selected);
      map.getSource("vehicles").setData({ type: "FeatureCollection", features });
    });
  }

  // a vehicle's colour: an open alert nobody closed, else the server's state (late, moving, stopped)
  function colourState(v) {
    for (const a of state.alerts.values()) if (a.vehicle === v.vehicle) return "alert";
    return v.state === "alert" ? (v.motion || "unknown") : v.state;
  }

  // ------------------------------------------------------------------ hexagons
  function hexMetric(cell) {
    if (state.hex === "dwell") return cell.dwell_minutes || 0;
    if (state.hex === "speed") return cell.mean_speed_mps == null ? null : cell.mean_speed_mps * 3.6;
    return cell.alerts || 0;
  }
  function drawCells() {
    if (!mapReady) return;
    if (state.hex === "off") { map.getSource("cells").setData(empty()); $("hex-legend").hidden = true; return; }
    const values = state.cells.map(hexMetric).filter((v) => v != null && v > 0);
    const top = values.length ? Math.max(...values) : 1;
    const features = [];
    for (const cell of state.cells) {
      const value = hexMetric(cell);
      if (value == null || value <= 0) continue;
      const ring = h3.cellToBoundary(cell.h3_cell, true);
      features.push({ type: "Feature", geometry: { type: "Polygon", coordinates: [ring] },
        properties: { v: value / top, value } });
    }
    map.getSource("cells").setData({ type: "FeatureCollection", features });
    const unit = { dwell: "standing min", speed: "km/h", alerts: "alerts" }[state.hex];
    $("hex-legend").hidden = false;
    $("hex-legend").innerHTML = "0 <span class='ramp'></span> " + esc(Math.round(top)) + " " + unit + " · last hour";
  }
  async function loadCells() {
    if (state.hex === "off") return drawCells();
    try { state.cells = await api("/v1/cells"); } catch (err) { state.cells = []; }
    drawCells();
  }
  document.querySelectorAll(".segmented button").forEach((button) => {
    button.addEventListener("click", () => {
      document.querySelectorAll(".segmented button").forEach((b) => b.classList.toggle("active", b === button));
      state.hex = button.dataset.hex;
      loadCells();
    });
  });

  // ------------------------------------------------------------------ vehicle list
  function etaCell(v) {
    if (!v.next_stop_id) return "<span class='eta'>–</span>";
    const late = v.next_stop_eta && v.next_stop_window_end && v.next_stop_eta > v.next_stop_window_end;
    return "<span class='eta" + (late ? " late" : "") + "'>" + hhmm(v.next_stop_eta) +
      " <span class='win'>· " + hhmm(v.next_stop_window_end) + "</span></span>";
  }
  const rows = new Map();
  let listQueued = false;
  function renderVehicles() {
    if (listQueued) return;
    listQueued = true;
    requestAnimationFrame(() => {
      listQueued = false;
      const list = $("vehicles");
      const ids = [...state.vehicles.keys()].sort();
      ids.forEach((id, index) => {
        const v = state.vehicles.get(id);
        let row = rows.get(id);
        if (!row) {
          row = document.createElement("li");
          row.className = "veh";
          row.dataset.vehicle = id;
          row.addEventListener("click", () => select(id));
          rows.set(id, row);
        }
        const s = colourState(v);
        const html = "<span class='id'>" + esc(id) + "</span><span class='pill " + s + "'>" + s + "</span>" +
          "<span class='stop'>" + esc(v.next_stop_id || (v.stops_remaining === 0 ? "round done" : "–")) + "</span>" +
          etaCell(v);
        if (row.dataset.html !== html) { row.innerHTML = html; row.dataset.html = html; }
        row.classList.toggle("selected", id === state.selected);
        if (list.children[index] !== row) list.insertBefore(row, list.children[index] || null);
      });
      $("vehicles-count").textContent = ids.length;
      const moving = [...state.vehicles.values()].filter((v) => v.motion === "moving").length;
      $("kpi-fleet").textContent = moving + " / " + ids.length;
    });
  }

  // ------------------------------------------------------------------ exceptions feed
  function isException(a) { return a.status === "open" && !a.closed_at; }
  function alertWhere(a) {
    // richer context (summary, lat/lon) is shown when the alert carries it
    const d = a.details || {};
    if (a.summary || d.summary) return esc(a.summary || d.summary);
    const parts = [];
    if (a.stop_id) parts.push("stop <b>" + esc(a.stop_id) + "</b>");
    if (d.door) parts.push(esc(d.door) + " door");
    if (d.celsius != null) parts.push(esc(Number(d.celsius).toFixed(1)) + " °C");
    if (d.distance_m != null) parts.push(esc(Math.round(d.distance_m)) + " m off");
    if (d.dwell_s != null) parts.push(esc(Math.round(d.dwell_s / 60)) + " min");
    if (!parts.length && a.h3_cell) parts.push("cell " + esc(a.h3_cell.slice(0, 9)) + "…");
    return parts.join(" · ");
  }
  function renderExceptions() {
    const list = $("exceptions");
    const open = [...state.alerts.values()].sort((a, b) => (a.start_time < b.start_time ? 1 : -1));
    const keep = new Set(open.map((a) => a.id));
    for (const li of [...list.children]) if (!keep.has(li.dataset.alert)) li.remove();
    open.forEach((a, index) => {
      let li = list.querySelector("li[data-alert='" + a.id + "']");
      const html =
        "<span class='sev " + esc(a.severity) + "'></span>" +
        "<div><div class='what'>" + esc(TYPE_LABEL[a.type] || a.type) + " · " + esc(a.vehicle) + "</div>" +
        // the "since" text is filled in below and by its timer: left out of the row's html, so a
        // row is rebuilt only when the alert changes (a rebuilt row loses a click under way)
        "<div class='meta'>since <b data-ago='" + esc(a.start_time) + "'></b>" +
        (alertWhere(a) ? " · " + alertWhere(a) : "") +
        " · owner <b>" + esc(a.owner || "–") + "</b></div></div>" +
        "<div class='actions'>" +
        (a.acknowledged_at ? "<span class='acked'>✓ ack</span>" : "<button data-act='acknowledge'>Ack</button>") +
        "<button data-act='assign'>Assign</button></div>";
      if (!li) {
        li = document.createElement("li");
        li.className = "exc" + (state.loaded ? " fresh" : "");
        li.dataset.alert = a.id;
        li.addEventListener("click", onExceptionClick);
      }
      // an owner being typed in this row stays: the row catches up when the editing ends
      if (li.dataset.html !== html && !li.dataset.editing) {
        li.innerHTML = html;
        li.dataset.html = html;
        li.querySelectorAll("[data-ago]").forEach((el) => { el.textContent = ago(el.dataset.ago); });
      }
      li.dataset.vehicle = a.vehicle;
      if (list.children[index] !== li) list.insertBefore(li, list.children[index] || null);
    });
    $("exceptions-count").textContent = open.length;
    $("exceptions-empty").hidden = open.length > 0;
    $("kpi-exceptions").textContent = open.length;
  }
  async function onExceptionClick(event) {
    const li = event.currentTarget;
    const id = li.dataset.alert;
    const button = event.target.closest("button");
    if (!button) {
      const a = state.alerts.get(id);
      select(li.dataset.vehicle);
      // where it happened, when the alert says (else the vehicle's position)
      const lat = a && (a.lat != null ? a.lat : (a.details || {}).lat);
      const lon = a && (a.lon != null ? a.lon : (a.details || {}).lon);
      if (lat != null && lon != null) map.easeTo({ center: [lon, lat], zoom: Math.max(map.getZoom(), 15), duration: 600 });
      return;
    }
    if (button.dataset.act === "acknowledge") {
      button.disabled = true;
      try { merge(await api("/v1/alerts/" + id + "/acknowledge", { method: "POST" })); }
      catch (err) { button.disabled = false; banner("Could not acknowledge: " + err.message); }
    } else if (button.dataset.act === "assign") {
      const actions = li.querySelector(".actions");
      li.dataset.editing = "1";
      actions.innerHTML = "<input placeholder='owner' maxlength='100' aria-label='owner'>";
      const input = actions.querySelector("input");
      input.focus();
      input.addEventListener("keydown", async (e) => {
        if (e.key === "Escape") { delete li.dataset.editing; li.dataset.html = ""; renderExceptions(); }
        if (e.key !== "Enter" || !input.value.trim()) return;
        try {
          merge(await api("/v1/alerts/" + id + "/assign", { method: "POST",
            headers: { "Content-Type": "application/json" }, body: JSON.stringify({ owner: input.value.trim() }) }));
        } catch (err) { banner("Could not assign: " + err.message); }
        delete li.dataset.editing;
        li.dataset.html = "";
        renderExceptions();
      });
    }
  }
  function merge(alert) {
    const known = state.alerts.get(alert.id);
    if (known && known.rev > alert.rev) return;
    if (isException(alert)) state.alerts.set(alert.id, alert); else state.alerts.delete(alert.id);
    renderExceptions();
    drawVehicles();
    renderVehicles();
  }

  // ------------------------------------------------------------------ one vehicle
  async function select(id) {
    state.selected = id;
    $("vehicles-block").hidden = true;
    $("detail").hidden = false;
    $("detail-title").textContent = id;
    renderDetail();
    drawVehicles();
    const v = state.vehicles.get(id);
    if (v && v.lat != null) map.easeTo({ center: [v.lon, v.lat], zoom: Math.max(map.getZoom(), 14), duration: 600 });
    await refreshDetail();
  }
  async function refreshDetail() {
    const id = state.selected;
    if (!id) return;
    const [plan, track] = await Promise.all([
      api("/v1/vehicles/" + encodeURIComponent(id) + "/plan").catch(() => null),
      api("/v1/vehicles/" + encodeURIComponent(id) + "/track").catch(() => null),
    ]);
    if (state.selected !== id) return;
    state.plan = plan;
    state.track = track;
    renderDetail();
    if (!mapReady) return;
    map.getSource("track").setData(track ? { type: "Feature", properties: {},
      geometry: { type: "LineString", coordinates: track.points.map((p) => [p.lon, p.lat]) } } : empty());
    map.getSource("route").setData(plan && plan.route ? { type: "Feature", properties: {},
      geometry: { type: "LineString", coordinates: plan.route.map((p) => [p[1], p[0]]) } } : empty());
    map.getSource("stops").setData({ type: "FeatureCollection", features: (plan ? plan.stops : []).map((s) => ({
      type: "Feature", geometry: { type: "Point", coordinates: [s.lon, s.lat] }, properties: { id: s.id, status: s.status } })) });
  }
  function renderDetail() {
    const v = state.vehicles.get(state.selected) || {};
    const s = v.vehicle ? colourState(v) : "unknown";
    $("detail-state").className = "pill " + s;
    $("detail-state").textContent = s;
    const speed = v.speed_mps != null ? Math.round(v.speed_mps * 3.6) + " km/h" : "–";
    $("detail-facts").innerHTML =
      "<div class='fact'><b>" + esc(speed) + "</b><span>speed</span></div>" +
      "<div class='fact'><b>" + esc(v.stops_remaining != null ? v.stops_remaining : "–") + "</b><span>stops left</span></div>" +
      "<div class='fact'><b>" + esc(ago(v.last_fix_time) || "–") + "</b><span>last fix ago</span></div>";
    const plan = state.plan;
    $("detail-stops").innerHTML = !plan ? "<li><span></span><span class='when'>no plan</span></li>" :
      plan.stops.map((stop, i) => {
        const when = stop.arrived_at ? "arrived " + hhmm(stop.arrived_at) :
          stop.eta ? "ETA " + hhmm(stop.eta) : "no ETA yet";
        const win = stop.window_start || stop.window_end ? " · window " + hhmm(stop.window_start) + "–" + hhmm(stop.window_end) : "";
        return "<li><span class='n " + esc(stop.status) + "'>" + (i + 1) + "</span><div><div class='sid'>" + esc(stop.id) +
          "</div><div class='when'>" + esc(when + win) + "</div></div><span class='status'>" +
          esc(STATUS_LABEL[stop.status] || stop.status) + "</span></li>";
      }).join("");
  }
  $("detail-back").addEventListener("click", () => {
    state.selected = null; state.plan = null; state.track = null;
    $("detail").hidden = true;
    $("vehicles-block").hidden = false;
    if (mapReady) ["track", "route", "stops"].forEach((s) => map.getSource(s).setData(empty()));
    drawVehicles();
    renderVehicles();
  });

  // ------------------------------------------------------------------ KPIs
  async function loadKpis() {
    try {
      const k = await api("/v1/kpis");
      $("kpi-ontime").textContent = k.on_time_rate == null ? "–" : Math.round(k.on_time_rate * 100) + " %";
      const eta15 = (k.eta_accuracy || []).find((e) => e.horizon_min === 15);
      $("kpi-eta").textContent = eta15 && eta15.mae_s != null ? (eta15.mae_s / 60).toFixed(1) + " min" : "–";
    } catch (err) { /* shown as dashes */ }
  }

  // ------------------------------------------------------------------ live stream
  function onEvent(kind, data) {
    state.stats.events += 1;
    if (kind === "vehicle") {
      const known = state.vehicles.get(data.vehicle);
      if (known && known.rev > data.rev) return;
      state.vehicles.set(data.vehicle, data);
      drawVehicles();
      renderVehicles();
      if (data.vehicle === state.selected) renderDetail();
    } else if (kind === "alert") {
      merge(data);
    } else if ((kind === "stop_event" || kind === "eta") && data.vehicle === state.selected) {
      scheduleDetailRefresh();
    }
  }
  let detailTimer = null;
  function scheduleDetailRefresh() {
    if (detailTimer) return;
    detailTimer = setTimeout(() => { detailTimer = null; refreshDetail(); }, 1500);
  }
  function setLive(on, text) {
    state.streamOpen = on;
    $("live").className = "live " + (on ? "on" : "off");
    $("live-text").textContent = text;
  }
  async function stream() {
    let delay = 1000;
    for (;;) {
      try {
        const headers = { Authorization: "Bearer " + token, Accept: "text/event-stream" };
        if (state.lastEventId != null) headers["Last-Event-ID"] = String(state.lastEventId);
        const response = await fetch("/v1/stream", { headers, cache: "no-store" });
        if (response.status === 401) { setLive(false, "no access"); return; }
        if (!response.ok || !response.body) throw new Error("HTTP " + response.status);
        setLive(true, "live");
        delay = 1000;
        const reader = response.body.getReader();
        const decoder = new TextDecoder();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += decoder.decode(value, { stream: true });
          let cut;
          while ((cut = buffer.indexOf("\n\n")) >= 0) {
            const frame = buffer.slice(0, cut);
            buffer = buffer.slice(cut + 2);
            let kind = "message", data = "", id = null;
            for (const line of frame.split("\n")) {
              if (line.startsWith("event: ")) kind = line.slice(7);
              else if (line.startsWith("data: ")) data += line.slice(6);
              else if (line.startsWith("id: ")) id = Number(line.slice(4));
            }
            if (id != null) state.lastEventId = id;
            if (data) onEvent(kind, JSON.parse(data));
          }
        }
      } catch (err) { /* reconnect below */ }
      setLive(false, "reconnecting");
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 15000);
    }
  }

  // ------------------------------------------------------------------ start
  async function start() {
    if (!token) { banner("Open this page as /?token=… (fleetstream token add TENANT prints one)."); return; }
    try {
      const me = await api("/v1/me");
      state.tenant = me.tenant;
      state.role = me.role;
      $("tenant").textContent = "tenant " + me.tenant + " · " + me.role;
    } catch (err) { return; }
    stream();  // first, so that nothing committed after the snapshot below is missed
    const [vehicles, alerts] = await Promise.all([api("/v1/vehicles"), api("/v1/alerts?exceptions=true&limit=500")]);
    for (const v of vehicles) {
      const known = state.vehicles.get(v.vehicle);
      if (!known || known.rev <= v.rev) state.vehicles.set(v.vehicle, v);
    }
    for (const a of alerts) {
      const known = state.alerts.get(a.id);
      if (!known || known.rev <= a.rev) state.alerts.set(a.id, a);
    }
    renderVehicles();
    renderExceptions();
    drawVehicles();
    state.loaded = true;
    loadKpis();
    setInterval(loadKpis, 30000);
    setInterval(() => { if (state.hex !== "off") loadCells(); }, 30000);
    setInterval(() => document.querySelectorAll("[data-ago]").forEach((el) => { el.textContent = ago(el.dataset.ago); }), 15000);
    setInterval(() => { if (state.selected) refreshDetail(); }, 20000);
  }

  // for tests and the curious: the map and what it rendered
  window.fleet = {
    map, state,
    renderedVehicles: () => (mapReady ? map.queryRenderedFeatures({ layers: ["vehicles"] }).map((f) => f.properties.vehicle) : []),
  };
  start();
})();
