// keyledger portal: small enhancements over pages that work without
// JavaScript — action menus, dialogs, the one-time key display and copying
// it, the error summary, and permissions that follow the key type. No inline
// handlers: the Content-Security-Policy allows scripts from this file only.
(function () {
  "use strict";

  // ---- Action menus (WAI-ARIA menu button) --------------------------------
  // A menu's items live in a <template> and enter the page only while it is
  // open: one "Delete" (etc.) on the page at a time, for people and tests.
  function parts(wrap) {
    return {
      button: wrap.querySelector("[data-menu-button]"),
      menu: wrap.querySelector('[role="menu"]'),
      items: wrap.querySelector("template[data-menu-items]"),
    };
  }

  function items(menu) {
    return Array.prototype.slice.call(menu.querySelectorAll('[role="menuitem"]'));
  }

  // Closing with `focusButton` puts focus on the button first, so it never
  // falls to the page when the focused item leaves it.
  function closeMenu(wrap, focusButton) {
    var p = parts(wrap);
    if (p.menu.hidden) return;
    if (focusButton) p.button.focus();
    p.menu.hidden = true;
    p.menu.textContent = "";
    p.button.setAttribute("aria-expanded", "false");
  }

  function closeAllMenus(except) {
    document.querySelectorAll("[data-menu]").forEach(function (wrap) {
      if (wrap !== except) closeMenu(wrap, false);
    });
  }

  function openMenu(wrap, focusLast) {
    var p = parts(wrap);
    closeAllMenus(wrap);
    p.menu.textContent = "";
    p.menu.appendChild(document.importNode(p.items.content, true));
    p.menu.hidden = false;
    p.button.setAttribute("aria-expanded", "true");
    var list = items(p.menu);
    if (list.length) list[focusLast ? list.length - 1 : 0].focus();
  }

  document.querySelectorAll("[data-menu]").forEach(function (wrap) {
    var p = parts(wrap);
    // With JavaScript the button opens the menu instead of the actions page.
    p.button.addEventListener("click", function (event) {
      event.preventDefault();
      if (p.menu.hidden) openMenu(wrap, false);
      else closeMenu(wrap, true);
    });
    p.button.addEventListener("keydown", function (event) {
      if (event.key === "ArrowDown" || event.key === "ArrowUp") {
        event.preventDefault();
        openMenu(wrap, event.key === "ArrowUp");
      }
    });
    p.menu.addEventListener("keydown", function (event) {
      var list = items(p.menu);
      var index = list.indexOf(document.activeElement);
      if (event.key === "ArrowDown") {
        event.preventDefault();
        list[(index + 1) % list.length].focus();
      } else if (event.key === "ArrowUp") {
        event.preventDefault();
        list[(index - 1 + list.length) % list.length].focus();
      } else if (event.key === "Home") {
        event.preventDefault();
        list[0].focus();
      } else if (event.key === "End") {
        event.preventDefault();
        list[list.length - 1].focus();
      } else if (event.key === "Escape") {
        event.preventDefault();
        closeMenu(wrap, true);
      } else if (event.key === "Tab") {
        // Not prevented: from the button, Tab (or Shift+Tab) goes on to the
        // next (or previous) control of the page.
        closeMenu(wrap, true);
      } else if ((event.key === " " || event.key === "Enter") && document.activeElement.tagName === "A") {
        event.preventDefault();
        document.activeElement.click();
      }
    });
  });

  // ---- Dialogs: regenerate and delete ---------------------------------------
  // Made from their <template> when opened, removed when closed.
  function openDialog(trigger) {
    var template = document.getElementById(trigger.getAttribute("data-dialog"));
    if (!template || !template.content) return false;
    var dialog = document.importNode(template.content, true).querySelector("dialog");
    if (!dialog || typeof dialog.showModal !== "function") return false; // follow the link instead
    var wrap = trigger.closest("[data-menu]");
    var returnTo = wrap ? parts(wrap).button : trigger;
    if (wrap) closeMenu(wrap, true);
    var form = dialog.querySelector("[data-dialog-form]");
    form.setAttribute("action", trigger.getAttribute("data-action"));
    var name = trigger.getAttribute("data-key-name");
    form.setAttribute("data-expected-name", name);
    dialog.querySelectorAll("[data-key-name]").forEach(function (el) {
      el.textContent = name; // text, never markup
    });
    dialog.addEventListener("close", function () {
      dialog.remove();
      returnTo.focus();
    });
    document.body.appendChild(dialog);
    dialog.showModal();
    var first = dialog.querySelector("input:not([type=hidden])");
    if (first) first.focus();
    return true;
  }

  document.addEventListener("click", function (event) {
    var trigger = event.target.closest("[data-dialog]");
    if (trigger && openDialog(trigger)) {
      event.preventDefault();
      return;
    }
    if (!event.target.closest("[data-menu]")) closeAllMenus(null);
  });

  // Delete: the typed name must match before the form goes.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!form.hasAttribute("data-confirm-name")) return;
    if (event.submitter && event.submitter.getAttribute("formmethod") === "dialog") return;
    var input = form.querySelector('input[name="confirm_name"]');
    var error = form.querySelector("[data-confirm-error]");
    if (input.value !== form.getAttribute("data-expected-name")) {
      event.preventDefault();
      error.hidden = false;
      input.setAttribute("aria-invalid", "true");
      input.setAttribute("aria-describedby", input.getAttribute("aria-describedby") + " " + error.id);
      input.focus();
    }
  });

  // ---- Forms that show a secret: sent once ---------------------------------
  // A second click while the first is on its way is ignored, so the answer
  // that shows the secret is the one the browser keeps. (Without JavaScript
  // the server still makes one key: the form's nonce answers a second
  // submission with what the first did.)
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!form.hasAttribute("data-submit-once") || event.defaultPrevented) return;
    if (event.submitter && event.submitter.getAttribute("formmethod") === "dialog") return;
    if (form.hasAttribute("data-submitting")) {
      event.preventDefault();
      return;
    }
    form.setAttribute("data-submitting", "");
    if (event.submitter) event.submitter.setAttribute("aria-disabled", "true");
  });
  // A page restored by Back is usable again.
  window.addEventListener("pageshow", function () {
    document.querySelectorAll("form[data-submitting]").forEach(function (form) {
      form.removeAttribute("data-submitting");
      form.querySelectorAll("[aria-disabled]").forEach(function (button) {
        button.removeAttribute("aria-disabled");
      });
    });
  });

  // A page that answered a form: a reload is a plain visit of the list.
  document.querySelectorAll("[data-page-url]:not(dialog)").forEach(function (box) {
    if (window.history.replaceState) window.history.replaceState(null, "", box.getAttribute("data-page-url"));
  });

  // ---- The one-time key display -------------------------------------------
  document.querySelectorAll("dialog[data-modal-on-load]").forEach(function (dialog) {
    // A reload of this page is a plain visit of the list: it never sends the
    // form (and makes a key) again.
    var pageUrl = dialog.getAttribute("data-page-url");
    if (pageUrl && window.history.replaceState) window.history.replaceState(null, "", pageUrl);
    if (typeof dialog.showModal !== "function") return;
    var field = dialog.querySelector("input.secret");
    var reminder = dialog.querySelector("[data-secret-reminder]");
    function show() {
      if (!dialog.open) dialog.showModal();
      if (field) {
        field.focus();
        field.select();
      }
    }
    // Escape must not lose the key: it stays until Done (a link) is chosen.
    function remind() {
      if (reminder) reminder.hidden = false;
      show();
    }
    dialog.addEventListener("cancel", function (event) {
      event.preventDefault();
      remind();
    });
    // Browsers may close a modal dialog without a cancelable event (Escape
    // pressed twice): open it again. (The close() just below also fires
    // "close", once the dialog is open again: nothing to do then.)
    dialog.addEventListener("close", function () {
      if (!dialog.open) remind();
    });
    dialog.close();
    show();
  });

  document.querySelectorAll("[data-copy]").forEach(function (button) {
    button.addEventListener("click", function () {
      var field = document.getElementById(button.getAttribute("data-copy"));
      var status = button.closest(".field").querySelector("[data-copy-status]");
      function done(ok) {
        if (status) status.textContent = ok ? "Copied to the clipboard." : "Select the key and copy it.";
      }
      field.focus();
      field.select();
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(field.value).then(function () { done(true); }, function () {
          done(document.execCommand("copy"));
        });
      } else {
        done(document.execCommand("copy"));
      }
    });
  });

  // ---- A refused form: its summary of what to fix takes the focus ----------
  var summary = document.querySelector("[data-error-summary]");
  if (summary && !document.querySelector("dialog[data-modal-on-load]")) summary.focus();

  // ---- Public keys offer only their permissions ----------------------------
  var typeSelect = document.querySelector("[data-key-type]");
  if (typeSelect) {
    var follow = function () {
      var isPublic = typeSelect.value === "public";
      document.querySelectorAll(".private-scope").forEach(function (row) {
        row.hidden = isPublic;
        var box = row.querySelector("input");
        if (isPublic) box.checked = false;
        box.disabled = isPublic;
      });
    };
    typeSelect.addEventListener("change", follow);
    follow();
  }
})();
