// relgraph data-set report: sort a table by clicking a header, filter the video table.
"use strict";

function sortTable(table, column, type, ascending) {
  const body = table.tBodies[0];
  const rows = Array.from(body.rows);
  const key = (row) => {
    const cell = row.cells[column];
    const value = cell ? cell.getAttribute("data-sort") : "";
    if (type === "number") {
      const number = parseFloat(value);
      return Number.isNaN(number) ? -Infinity : number;
    }
    return (value || "").toLowerCase();
  };
  rows.sort((a, b) => {
    const x = key(a);
    const y = key(b);
    const order = x < y ? -1 : x > y ? 1 : 0;
    return ascending ? order : -order;
  });
  rows.forEach((row) => body.appendChild(row));
}

function setUpSorting(table) {
  const headers = table.tHead.rows[0].cells;
  Array.from(headers).forEach((header, column) => {
    const type = header.getAttribute("data-type");
    if (!type) return;
    header.classList.add("sortable-header");
    header.addEventListener("click", () => {
      const ascending = header.getAttribute("aria-sort") !== "ascending";
      Array.from(headers).forEach((h) => h.removeAttribute("aria-sort"));
      header.setAttribute("aria-sort", ascending ? "ascending" : "descending");
      sortTable(table, column, type, ascending);
    });
  });
}

function setUpFilters(table) {
  const text = document.getElementById("filter");
  const cls = document.getElementById("class-filter");
  const status = document.getElementById("status-filter");
  const shown = document.getElementById("shown");
  if (!text) return;
  const apply = () => {
    const words = text.value.toLowerCase().trim().split(/\s+/).filter(Boolean);
    let count = 0;
    Array.from(table.tBodies[0].rows).forEach((row) => {
      const search = row.getAttribute("data-search") || "";
      const visible =
        words.every((word) => search.includes(word)) &&
        (!cls.value || row.getAttribute("data-class") === cls.value) &&
        (!status.value || row.getAttribute("data-status") === status.value);
      row.hidden = !visible;
      if (visible) count += 1;
    });
    shown.textContent = count + " of " + table.tBodies[0].rows.length + " shown";
  };
  [text, cls, status].forEach((el) => el.addEventListener("input", apply));
  apply();
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("table.sortable").forEach((table) => {
    setUpSorting(table);
    setUpFilters(table);
  });
});
