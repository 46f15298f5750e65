/* The provider picker's type-ahead: a progressive enhancement of the connect page's search form.
 *
 * Without this script the form searches on the server and the page lists the results; with it
 * the search box becomes a WAI-ARIA combobox (APG "list autocomplete") over the same search,
 * read from /connect/search as the patient types. Choosing a provider shows its card with the
 * Connect button, built from the page's own inert <template>. No framework, no inline script.
 */
(function () {
  "use strict";
  var form = document.querySelector("form[data-typeahead]");
  if (!form || !window.fetch || !window.AbortController || !window.URLSearchParams) return;
  var input = form.querySelector("input[name=q]");
  var listbox = document.getElementById("provider-options");
  var live = document.getElementById("provider-status");
  var more = document.getElementById("provider-more");
  var choice = document.getElementById("provider-choice");
  var cardTemplate = document.getElementById("provider-card-template");
  var serverResults = document.getElementById("provider-results");
  if (!input || !listbox || !live || !more || !choice || !cardTemplate) return;

  var endpoint = form.getAttribute("data-typeahead");
  var linkField = form.querySelector("input[name=link]");
  var minLength = parseInt(input.getAttribute("data-min-length") || "2", 10);
  var delay = 250;
  var timer = null;
  var pending = null;
  var options = [];
  var active = -1;
  var lastQuery = null;

  input.setAttribute("role", "combobox");
  input.setAttribute("aria-autocomplete", "list");
  input.setAttribute("aria-controls", listbox.id);
  input.setAttribute("aria-expanded", "false");

  function folded(value) {
    return value.normalize("NFKD").replace(/[^A-Za-z0-9]+/g, "");
  }

  function say(text) {
    // A polite live region is read when its text changes; clear first so a repeat is read too.
    live.textContent = "";
    window.setTimeout(function () { live.textContent = text; }, 50);
  }

  function setExpanded(open) {
    listbox.hidden = !open;
    input.setAttribute("aria-expanded", open ? "true" : "false");
    if (!open) setActive(-1);
  }

  function setActive(index) {
    if (active >= 0 && options[active]) options[active].setAttribute("aria-selected", "false");
    active = index;
    if (active >= 0 && options[active]) {
      options[active].setAttribute("aria-selected", "true");
      input.setAttribute("aria-activedescendant", options[active].id);
      options[active].scrollIntoView({ block: "nearest" });
    } else {
      input.removeAttribute("aria-activedescendant");
    }
  }

  function option(card, index) {
    var item = document.createElement("li");
    item.id = "provider-option-" + index;
    item.setAttribute("role", "option");
    item.setAttribute("aria-selected", "false");
    item.className = "option";
    if (card.logo_url) {
      var logo = document.createElement("img");
      logo.src = card.logo_url;
      logo.alt = card.logo_alt || "";
      logo.width = 24;
      logo.height = 24;
      item.appendChild(logo);
    }
    var name = document.createElement("strong");
    name.textContent = card.label;
    item.appendChild(name);
    var extra = [card.detail, card.status ? "Your connection: " + card.status.title : ""]
      .filter(Boolean).join(" · ");
    if (extra) {
      var small = document.createElement("small");
      small.textContent = " " + extra;
      item.appendChild(small);
    }
    item.addEventListener("mousedown", function (event) { event.preventDefault(); });
    item.addEventListener("click", function () { choose(card); });
    options.push(item);
    return item;
  }

  function render(found) {
    listbox.textContent = "";
    options = [];
    var cards = [];
    found.groups.forEach(function (group, g) {
      if (!group.brand) {
        group.providers.forEach(function (card) {
          cards.push(card);
          listbox.appendChild(option(card, cards.length - 1));
        });
        return;
      }
      // APG listbox groups: the brand labels the group of its portals.
      var holder = document.createElement("li");
      holder.setAttribute("role", "presentation");
      var heading = document.createElement("div");
      heading.id = "provider-brand-" + g;
      heading.className = "brand";
      // Seen, not read as a list item: the group it labels carries the name for screen readers.
      heading.setAttribute("aria-hidden", "true");
      heading.textContent = group.brand;
      var list = document.createElement("ul");
      list.setAttribute("role", "group");
      list.setAttribute("aria-labelledby", heading.id);
      group.providers.forEach(function (card) {
        cards.push(card);
        list.appendChild(option(card, cards.length - 1));
      });
      holder.appendChild(heading);
      holder.appendChild(list);
      listbox.appendChild(holder);
    });
    var count = found.count;
    var words = count === 1 ? "1 provider found" : count + " providers found";
    if (found.has_more) words = "More than " + count + " providers found; showing the first " + count;
    if (count === 0) words = "No providers found";
    say(words);
    if (found.has_more) {
      var params = new URLSearchParams();
      if (linkField && linkField.value) params.set("link", linkField.value);
      params.set("q", found.query);
      params.set("page", "2");
      more.querySelector("a").href = form.getAttribute("action") + "?" + params.toString();
      more.hidden = false;
    } else {
      more.hidden = true;
    }
    setExpanded(count > 0);
  }

  function search(query) {
    if (pending) pending.abort();
    pending = new AbortController();
    var params = new URLSearchParams();
    if (linkField && linkField.value) params.set("link", linkField.value);
    params.set("q", query);
    var controller = pending;
    fetch(endpoint + "?" + params.toString(), {
      headers: { Accept: "application/json" },
      credentials: "same-origin",
      signal: controller.signal
    }).then(function (response) {
      if (response.status === 429) {
        say("Too many searches at once. Wait a moment, then type again or press Search.");
        return null;
      }
      if (!response.ok) {
        say("The search is not available here. Press Search to search instead.");
        return null;
      }
      return response.json();
    }).then(function (found) {
      if (found && controller === pending && found.query === input.value.trim().slice(0, 200)) {
        render(found);
      }
    }).catch(function (error) {
      if (error && error.name === "AbortError") return;
      say("The search is not available here. Press Search to search instead.");
    });
  }

  function choose(card) {
    var copy = cardTemplate.content.cloneNode(true);
    // Named only here: the page's inert template posts no provider.
    var tenant = copy.querySelector("[data-field=tenant]");
    tenant.name = "tenant";
    tenant.value = card.tenant;
    copy.querySelector("[data-field=name]").textContent = card.label;
    var detail = [
      card.name !== card.label ? card.name : "",
      card.detail,
      card.status ? "Your connection: " + card.status.title : ""
    ].filter(Boolean).join(" · ");
    copy.querySelector("[data-field=detail]").textContent = detail;
    var button = copy.querySelector("button");
    button.textContent = "Connect to " + card.label;
    choice.textContent = "";
    choice.appendChild(copy);
    choice.hidden = false;
    input.value = card.name;
    lastQuery = input.value.trim();
    setExpanded(false);
    say("Chosen: " + card.label + ". Press Connect to continue.");
    // The next step is the Connect button: focus it so Enter (or Space) connects.
    choice.querySelector("button").focus();
  }

  input.addEventListener("input", function () {
    var query = input.value.trim();
    if (query === lastQuery) return;
    lastQuery = query;
    if (serverResults) serverResults.hidden = true;
    choice.hidden = true;
    window.clearTimeout(timer);
    if (folded(query).length < minLength) {
      if (pending) pending.abort();
      setExpanded(false);
      more.hidden = true;
      if (query) say("Type at least " + minLength + " letters to see providers.");
      return;
    }
    timer = window.setTimeout(function () { search(query); }, delay);
  });

  input.addEventListener("keydown", function (event) {
    var open = !listbox.hidden && options.length > 0;
    if (event.key === "ArrowDown") {
      if (!options.length) return;
      event.preventDefault();
      if (!open) setExpanded(true);
      setActive(active + 1 < options.length ? active + 1 : 0);
    } else if (event.key === "ArrowUp") {
      if (!options.length) return;
      event.preventDefault();
      if (!open) setExpanded(true);
      setActive(active > 0 ? active - 1 : options.length - 1);
    } else if (event.key === "Enter") {
      // With no option active Enter submits the form: the server's search, as without script.
      if (open && active >= 0) {
        event.preventDefault();
        options[active].click();
      }
    } else if (event.key === "Escape") {
      if (open) {
        event.preventDefault();
        setExpanded(false);
      } else if (input.value) {
        event.preventDefault();
        input.value = "";
        lastQuery = "";
      }
    } else if (event.key === "Home" || event.key === "End") {
      setActive(-1);
    }
  });

  input.addEventListener("blur", function () {
    window.setTimeout(function () { setExpanded(false); }, 150);
  });
})();
