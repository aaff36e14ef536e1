// What-if without a page reload: asks the server's model (what-if.json) and updates the table and the
// chart in place. Without JavaScript the form submits and the server renders the same numbers.
(function () {
  "use strict";
  var form = document.getElementById("what-if-form");
  if (!form || !window.fetch) {
    return;
  }
  var endpoint = form.getAttribute("data-endpoint");
  var errorBox = document.getElementById("what-if-error");
  var line = document.getElementById("what-if-line");
  var key = document.querySelector(".what-if-key");
  var tierCell = document.getElementById("what-if-tier");
  var scheduleCell = document.getElementById("what-if-schedule");
  var timer = null;
  var latest = 0;

  function showError(message) {
    errorBox.textContent = message;
    errorBox.hidden = false;
  }

  function apply(body) {
    errorBox.hidden = true;
    body.risks.forEach(function (row) {
      var cell = document.querySelector('[data-what-if-month="' + String(row.month) + '"]');
      if (!cell) {
        return;
      }
      cell.setAttribute("data-risk", row.risk.toFixed(4));
      cell.querySelector(".value").textContent = row.text;
      cell.querySelector(".range").textContent = row.rangeText;
    });
    // Every text comes from the server's presentation layer; the script formats no number itself.
    if (tierCell) {
      tierCell.textContent = body.estimateTierLabel;
      tierCell.setAttribute("data-tier", body.estimateTier);
    }
    if (scheduleCell) {
      scheduleCell.textContent = body.scheduleTierLabel;
      scheduleCell.setAttribute("data-tier", body.scheduleTier);
    }
    if (line) {
      line.setAttribute("d", body.line);
      line.removeAttribute("visibility");
    }
    if (key) {
      key.hidden = false;
    }
  }

  function update() {
    var params = new URLSearchParams(new FormData(form));
    var ticket = ++latest;
    fetch(endpoint + "?" + params.toString(), {
      credentials: "same-origin",
      headers: { Accept: "application/json" },
    })
      .then(function (response) {
        return response.json().then(function (body) {
          return { ok: response.ok, body: body };
        });
      })
      .then(function (result) {
        if (ticket !== latest) {
          return; // an older answer arriving after a newer one
        }
        if (result.ok) {
          apply(result.body);
        } else {
          showError(result.body.error || "The what-if could not be calculated.");
        }
      })
      .catch(function () {
        showError("The what-if could not be calculated (no answer from the app).");
      });
  }

  form.addEventListener("input", function () {
    window.clearTimeout(timer);
    timer = window.setTimeout(update, 250);
  });
  form.addEventListener("submit", function (event) {
    event.preventDefault();
    update();
  });
})();
