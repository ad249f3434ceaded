// Sort a table by the column whose header button is clicked (again: reverse). Cells carry
// their sort key in data-sort; numbers sort as numbers, empty keys last.
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("thead th button").forEach(function (button) {
    button.addEventListener("click", function () {
      var th = button.closest("th"), col = th.cellIndex, asc = th.getAttribute("aria-sort") !== "ascending";
      table.querySelectorAll("thead th").forEach(function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", asc ? "ascending" : "descending");
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      var key = function (row) { var v = row.cells[col].getAttribute("data-sort"); return v === null ? "" : v; };
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (x === "" || y === "") { return (x === "") - (y === ""); }
        var nx = Number(x), ny = Number(y), c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
        return asc ? c : -c;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
