// The dashboard's only script: the day slider fetches the grid of the day it stops on,
// and a new measure reloads the page. Without it the form's "Show" button does the same.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const slider = document.getElementById("day-slider");
  const label = document.getElementById("day-label");
  const input = document.getElementById("day");
  const measure = document.getElementById("measure");
  const grid = document.getElementById("grid");
  if (!slider || !grid) return;
  const days = (slider.dataset.days || "").split(",").filter((d) => d);
  const dayAt = () => days[Number(slider.value)] || "";
  slider.addEventListener("input", () => {
    label.textContent = dayAt();
  });
  slider.addEventListener("change", async () => {
    const day = dayAt();
    input.value = day;
    label.textContent = day;
    const query = new URLSearchParams({ day, measure: measure.value });
    const response = await fetch("/dashboard/grid.svg?" + query, { credentials: "same-origin" });
    if (!response.ok) {
      grid.textContent = "The grid could not be loaded (" + response.status + "): reload the page.";
      return;
    }
    grid.innerHTML = await response.text();
    for (const [id, format] of [["cells-day-json", "json"], ["cells-day-csv", "csv"]]) {
      const link = document.getElementById(id);
      if (link) link.href = "/dashboard/data/cells." + format + "?day=" + encodeURIComponent(day);
    }
    const url = new URL(window.location.href);
    url.searchParams.set("day", day);
    window.history.replaceState(null, "", url);
  });
  measure.addEventListener("change", () => {
    input.value = dayAt();
    document.getElementById("cell-form").submit();
  });
});
