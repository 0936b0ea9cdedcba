(function () {
  var zone = document.getElementById("timezone");
  if (zone && zone.getAttribute("data-guess") === "yes") {
    try {
      var guess = Intl.DateTimeFormat().resolvedOptions().timeZone;
      for (var i = 0; i < zone.options.length; i++) {
        if (zone.options[i].value === guess) { zone.value = guess; break; }
      }
    } catch (e) { /* no Intl: the select stays at UTC */ }
  }
})();
