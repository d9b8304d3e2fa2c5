// keyledger portal: small enhancements over pages that work without
// JavaScript — action menus, dialogs, copying a new key, filters that apply
// on change, and permissions that follow the key type. No inline handlers:
// the Content-Security-Policy allows scripts from this file only.
(function () {
  "use strict";

  // ---- Action menus (WAI-ARIA menu button) --------------------------------
  function items(menu) {
    return Array.prototype.slice.call(menu.querySelectorAll('[role="menuitem"]'));
  }

  function closeMenu(wrap, restoreFocus) {
    var button = wrap.querySelector("[data-menu-button]");
    var menu = wrap.querySelector('[role="menu"]');
    if (!menu || menu.hidden) return;
    menu.hidden = true;
    button.setAttribute("aria-expanded", "false");
    if (restoreFocus) button.focus();
  }

  function closeAllMenus(except) {
    document.querySelectorAll("[data-menu]").forEach(function (wrap) {
      if (wrap !== except) closeMenu(wrap, false);
    });
  }

  function openMenu(wrap, focusLast) {
    var button = wrap.querySelector("[data-menu-button]");
    var menu = wrap.querySelector('[role="menu"]');
    closeAllMenus(wrap);
    menu.hidden = false;
    button.setAttribute("aria-expanded", "true");
    var list = items(menu);
    if (list.length) list[focusLast ? list.length - 1 : 0].focus();
  }

  document.querySelectorAll("[data-menu]").forEach(function (wrap) {
    var button = wrap.querySelector("[data-menu-button]");
    var menu = wrap.querySelector('[role="menu"]');
    // With JavaScript the button opens the menu instead of the actions page.
    button.addEventListener("click", function (event) {
      event.preventDefault();
      if (menu.hidden) openMenu(wrap, false);
      else closeMenu(wrap, true);
    });
    button.addEventListener("keydown", function (event) {
      if (event.key === "ArrowDown" || event.key === "ArrowUp") {
        event.preventDefault();
        openMenu(wrap, event.key === "ArrowUp");
      }
    });
    menu.addEventListener("keydown", function (event) {
      var list = items(menu);
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
        closeMenu(wrap, false);
      } else if ((event.key === " " || event.key === "Enter") && document.activeElement.tagName === "A") {
        event.preventDefault();
        document.activeElement.click();
      }
    });
  });

  document.addEventListener("click", function (event) {
    if (!event.target.closest("[data-menu]")) closeAllMenus(null);
  });

  // ---- Dialogs: regenerate and delete ---------------------------------------
  document.querySelectorAll("[data-dialog]").forEach(function (trigger) {
    trigger.addEventListener("click", function (event) {
      var dialog = document.getElementById(trigger.getAttribute("data-dialog"));
      if (!dialog || typeof dialog.showModal !== "function") return; // follow the link instead
      event.preventDefault();
      var wrap = trigger.closest("[data-menu]");
      if (wrap) closeMenu(wrap, false);
      var form = dialog.querySelector("[data-dialog-form]");
      form.setAttribute("action", trigger.getAttribute("data-action"));
      form.reset();
      var name = trigger.getAttribute("data-key-name");
      form.setAttribute("data-expected-name", name);
      dialog.querySelectorAll("[data-key-name]").forEach(function (el) {
        el.textContent = name; // text, never markup
      });
      var error = dialog.querySelector("[data-confirm-error]");
      if (error) error.hidden = true;
      dialog.returnFocusTo = wrap ? wrap.querySelector("[data-menu-button]") : trigger;
      dialog.showModal();
      var first = dialog.querySelector("select, input:not([type=hidden])");
      if (first) first.focus();
    });
  });

  document.querySelectorAll("dialog").forEach(function (dialog) {
    dialog.addEventListener("close", function () {
      if (dialog.returnFocusTo) dialog.returnFocusTo.focus();
    });
  });

  // Delete: the typed name must match before the form goes.
  document.querySelectorAll("[data-confirm-name]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (event.submitter && event.submitter.getAttribute("formmethod") === "dialog") return;
      var input = form.querySelector('input[name="confirm_name"]');
      var error = form.querySelector("[data-confirm-error]");
      if (input.value !== form.getAttribute("data-expected-name")) {
        event.preventDefault();
        error.hidden = false;
        input.setAttribute("aria-invalid", "true");
        input.focus();
      }
    });
  });

  // ---- The one-time key display -------------------------------------------
  document.querySelectorAll("dialog[data-modal-on-load]").forEach(function (dialog) {
    if (typeof dialog.showModal !== "function") return;
    dialog.close();
    dialog.showModal();
    var field = dialog.querySelector("input.secret");
    if (field) {
      field.focus();
      field.select();
    }
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

  // ---- Filters apply on change; the Apply button stays for keyboards -----
  document.querySelectorAll("select[data-autosubmit]").forEach(function (select) {
    select.addEventListener("change", function () {
      select.form.submit();
    });
  });

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
