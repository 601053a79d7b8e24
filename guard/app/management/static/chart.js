// xmpp-guard management page: the live chart of stanzas per second, per
// direction and verdict.  Polls /rates.json (the same counter as /metrics:
// xmpp_guard_stanzas_total) once a second, turns two readings into a rate and
// draws the last POINTS rates of every series on the <canvas>.  No framework,
// no inline code; the colours are those of management.css's .series-N.
"use strict";

(function () {
  var POINTS = 120;
  var PERIOD_MS = 1000;
  var COLOURS = ["#1f77b4", "#2ca02c", "#d62728", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"];
  var series = {};      // name -> {rates: [...], index: n}
  var order = [];       // series names in the order first seen
  var previous = null;  // the last reading: {time, counts}
  var readings = 0;
  var peak = 0;

  function seriesFor(name) {
    if (!series[name]) {
      series[name] = {rates: [], index: order.length};
      order.push(name);
    }
    return series[name];
  }

  function record(reading) {
    readings += 1;
    if (previous !== null && reading.time > previous.time) {
      var elapsed = reading.time - previous.time;
      var names = Object.keys(reading.counts);
      Object.keys(previous.counts).forEach(function (name) {
        if (names.indexOf(name) < 0) { names.push(name); }
      });
      names.forEach(function (name) {
        var before = previous.counts[name] || 0;
        var now = reading.counts[name] || 0;
        var rate = Math.max(0, (now - before) / elapsed);
        var entry = seriesFor(name);
        entry.rates.push(rate);
        if (entry.rates.length > POINTS) { entry.rates.shift(); }
        if (rate > peak) { peak = rate; }
      });
      order.forEach(function (name) {  // a series that disappeared reads zero
        if (names.indexOf(name) < 0) {
          series[name].rates.push(0);
          if (series[name].rates.length > POINTS) { series[name].rates.shift(); }
        }
      });
    }
    previous = reading;
  }

  function draw(canvas) {
    var context = canvas.getContext("2d");
    var width = canvas.width, height = canvas.height, left = 48, bottom = 20, top = 10;
    var highest = 1;
    order.forEach(function (name) {
      series[name].rates.forEach(function (rate) { if (rate > highest) { highest = rate; } });
    });
    context.clearRect(0, 0, width, height);
    context.fillStyle = "#ffffff";
    context.fillRect(0, 0, width, height);
    context.strokeStyle = "#cccccc";
    context.fillStyle = "#333333";
    context.font = "11px sans-serif";
    for (var step = 0; step <= 4; step += 1) {
      var y = top + (height - top - bottom) * (1 - step / 4);
      context.beginPath();
      context.moveTo(left, y);
      context.lineTo(width, y);
      context.stroke();
      context.fillText((highest * step / 4).toFixed(1), 4, y + 4);
    }
    context.fillText("stanzas/s, last " + POINTS + " s", left, height - 4);
    order.forEach(function (name) {
      var rates = series[name].rates;
      context.strokeStyle = COLOURS[series[name].index % COLOURS.length];
      context.lineWidth = 2;
      context.beginPath();
      rates.forEach(function (rate, at) {
        var x = left + (width - left) * (POINTS - rates.length + at) / (POINTS - 1);
        var y = top + (height - top - bottom) * (1 - rate / highest);
        if (at === 0) { context.moveTo(x, y); } else { context.lineTo(x, y); }
      });
      context.stroke();
    });
    canvas.setAttribute("data-readings", String(readings));
    canvas.setAttribute("data-peak", peak.toFixed(3));
  }

  function legend(list, now) {
    while (list.firstChild) { list.removeChild(list.firstChild); }
    order.forEach(function (name) {
      var item = document.createElement("li");
      item.className = "series-" + (series[name].index % COLOURS.length);
      var rates = series[name].rates;
      var last = rates.length ? rates[rates.length - 1] : 0;
      item.textContent = name + ": " + last.toFixed(1) + "/s";
      list.appendChild(item);
    });
    var total = 0;
    order.forEach(function (name) {
      var rates = series[name].rates;
      total += rates.length ? rates[rates.length - 1] : 0;
    });
    now.textContent = order.length ? "now " + total.toFixed(1) + " stanzas/s in all" : "no stanza counted yet";
  }

  function poll(canvas, list, now) {
    var request = new XMLHttpRequest();
    request.open("GET", "/rates.json");
    request.timeout = PERIOD_MS * 5;
    request.onload = function () {
      if (request.status === 200) {
        try {
          record(JSON.parse(request.responseText));
          draw(canvas);
          legend(list, now);
        } catch (problem) {
          now.textContent = "unreadable reading: " + problem;
        }
      } else {
        now.textContent = "the guard answered " + request.status;
      }
      window.setTimeout(function () { poll(canvas, list, now); }, PERIOD_MS);
    };
    request.onerror = request.ontimeout = function () {
      now.textContent = "no answer from the guard";
      window.setTimeout(function () { poll(canvas, list, now); }, PERIOD_MS);
    };
    request.send();
  }

  document.addEventListener("DOMContentLoaded", function () {
    var canvas = document.getElementById("rates-chart");
    if (!canvas) { return; }
    draw(canvas);
    poll(canvas, document.getElementById("rates-legend"), document.getElementById("rates-now"));
  });
}());
