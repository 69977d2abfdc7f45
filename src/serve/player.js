// The session player (served as /static/player.js, included by src/serve/history.rs).
// Plays the clips of a session one after the other as one recording: the next clip starts by
// itself, Prev/Next and the clip list switch clips in place, the session timeline seeks
// (click, or arrow keys when it has focus), and the wall-clock time of the current frame
// follows the video. Everything it needs is in the page's data-* attributes; it talks to
// nothing but the clips. Without it the page still works: every clip is a link. The event pane
// (when the server keeps a search index) follows the play head: the event at or just before it
// is highlighted, a click on an event seeks to it, the kind menu hides the other kinds.
(function () {
  'use strict';
  var root = document.getElementById('session-player');
  var video = document.getElementById('player');
  if (!root || !video) {
    return;
  }
  var $ = function (id) { return document.getElementById(id); };
  var timeline = $('timeline');
  var playhead = $('playhead');
  var wallclock = $('wallclock');
  var label = $('clip-label');
  var prev = $('prev');
  var next = $('next');
  var download = $('download-current');
  var failedBox = $('clip-failed');
  var sid = root.dataset.session;
  var enc = encodeURIComponent(sid);
  var total = Number(root.dataset.totalMs) || 1;
  var tzOffsetS = Number(root.dataset.tzOffsetS) || 0;
  var items = Array.prototype.slice.call(document.querySelectorAll('#cliplist li'));
  var clips = items.map(function (li) {
    return {
      n: Number(li.dataset.clip),
      src: li.dataset.src,
      offset: Number(li.dataset.offsetMs),
      duration: Number(li.dataset.durationMs),
      start: Number(li.dataset.startMs),
      failed: li.dataset.failed === 'true',
      li: li
    };
  });
  var bars = timeline ? Array.prototype.slice.call(timeline.querySelectorAll('rect.clip')) : [];
  var current = Number(root.dataset.currentClip) || 1;
  var rate = 1;
  var loading = false;
  var pendingSeekS = Number(root.dataset.startAtS) || 0;
  var eventItems = Array.prototype.slice.call(document.querySelectorAll('#eventlist li'));
  var kindMenu = $('event-kind');
  var currentEvent = null;

  // Wall-clock text in the appliance's display zone: by its IANA name when it has one, else
  // by the zone's offset at the session.
  var fmt = null;
  if (root.dataset.tz && window.Intl) {
    try {
      fmt = new Intl.DateTimeFormat('sv-SE', {
        timeZone: root.dataset.tz, year: 'numeric', month: '2-digit', day: '2-digit',
        hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false
      });
    } catch (e) {
      fmt = null;
    }
  }
  function wall(ms) {
    if (fmt) {
      return fmt.format(new Date(ms)).replace('T', ' ');
    }
    return new Date(ms + tzOffsetS * 1000).toISOString().slice(0, 19).replace('T', ' ');
  }
  function span(ms) {
    var s = Math.floor(ms / 1000);
    var h = Math.floor(s / 3600);
    var m = Math.floor(s / 60) % 60;
    var pad = function (v) { return (v < 10 ? '0' : '') + v; };
    return (h ? h + ':' + pad(m) : m) + ':' + pad(s % 60);
  }

  function clip(n) { return clips[n - 1]; }
  function playable(n) { return n >= 1 && n <= clips.length && !clip(n).failed; }
  function neighbour(n, step) {
    for (var k = n + step; k >= 1 && k <= clips.length; k += step) {
      if (playable(k)) {
        return k;
      }
    }
    return 0;
  }
  function sessionMs() {
    return clip(current).offset + (video.currentTime || 0) * 1000;
  }

  function update() {
    var c = clip(current);
    var ms = sessionMs();
    if (wallclock) {
      wallclock.textContent = wall(c.start + (video.currentTime || 0) * 1000);
    }
    if (playhead) {
      playhead.setAttribute('x', (Math.min(ms, total) * 1000 / total).toFixed(2));
    }
    if (timeline) {
      timeline.setAttribute('aria-valuenow', String(Math.floor(ms / 1000)));
      timeline.setAttribute('aria-valuetext', span(ms));
    }
    markEvent(ms);
  }

  // Highlights the last event at or before session millisecond ms.
  function markEvent(ms) {
    var found = null;
    for (var i = 0; i < eventItems.length; i++) {
      if (Number(eventItems[i].dataset.offsetMs) > ms + 250) {
        break;
      }
      found = eventItems[i];
    }
    if (found === currentEvent) {
      return;
    }
    if (currentEvent) {
      currentEvent.classList.remove('current');
      currentEvent.removeAttribute('aria-current');
    }
    currentEvent = found;
    if (found) {
      found.classList.add('current');
      found.setAttribute('aria-current', 'true');
      if (found.scrollIntoView && !found.hidden) {
        found.scrollIntoView({ block: 'nearest' });
      }
    }
  }

  function setStep(a, k) {
    if (!a) {
      return;
    }
    if (k) {
      a.href = '/play/' + enc + '/' + k;
      a.removeAttribute('aria-disabled');
      a.removeAttribute('role');
    } else {
      a.removeAttribute('href');
      a.setAttribute('role', 'link');
      a.setAttribute('aria-disabled', 'true');
    }
  }

  // Makes clip n the current one and plays it from second atS.
  function select(n, atS, autoplay) {
    var c = clip(n);
    if (!c || c.failed) {
      return;
    }
    current = n;
    root.dataset.currentClip = String(n);
    delete root.dataset.ended;
    items.forEach(function (li) {
      var on = li === c.li;
      li.classList.toggle('current', on);
      if (on) {
        li.setAttribute('aria-current', 'true');
      } else {
        li.removeAttribute('aria-current');
      }
    });
    bars.forEach(function (b) {
      b.classList.toggle('current', Number(b.dataset.clip) === n);
    });
    if (label) {
      label.textContent = 'Clip ' + n + ' of ' + clips.length;
    }
    if (download) {
      download.href = '/clips/' + enc + '/' + n + '/download';
      download.textContent = 'Download clip ' + n;
    }
    if (failedBox) {
      failedBox.hidden = true;
    }
    video.hidden = false;
    setStep(prev, neighbour(n, -1));
    setStep(next, neighbour(n, 1));
    pendingSeekS = atS > 0 ? atS : 0;
    loading = true;
    video.src = c.src;
    if (autoplay) {
      var p = video.play();
      if (p && p.catch) {
        p.catch(function () {});
      }
    }
    if (window.history && history.replaceState) {
      history.replaceState(null, '', '/play/' + enc + '/' + n);
    }
    update();
  }

  // Goes to millisecond ms of the session: the clip that holds it, else the next one.
  function seekSession(ms) {
    ms = Math.max(0, Math.min(ms, total));
    var target = 0;
    for (var k = 1; k <= clips.length; k++) {
      var c = clip(k);
      if (!c.failed && ms >= c.offset && ms < c.offset + Math.max(c.duration, 1)) {
        target = k;
        break;
      }
    }
    var at = 0;
    if (target) {
      at = (ms - clip(target).offset) / 1000;
    } else {
      for (k = 1; k <= clips.length && !target; k++) {
        if (playable(k) && clip(k).offset >= ms) {
          target = k;
        }
      }
    }
    if (!target) {
      return;
    }
    if (target === current && !loading) {
      video.currentTime = at;
      update();
    } else {
      select(target, at, !video.paused || video.ended || target !== current);
    }
  }

  video.addEventListener('loadedmetadata', function () {
    loading = false;
    video.playbackRate = rate;
    if (pendingSeekS > 0 && Math.abs(video.currentTime - pendingSeekS) > 0.25) {
      video.currentTime = Math.min(pendingSeekS, video.duration || pendingSeekS);
    }
    pendingSeekS = 0;
    update();
  });
  // The speed a viewer chose holds for the next clips too.
  video.addEventListener('ratechange', function () {
    if (!loading) {
      rate = video.playbackRate;
    }
  });
  video.addEventListener('timeupdate', update);
  video.addEventListener('seeked', update);
  video.addEventListener('ended', function () {
    var k = neighbour(current, 1);
    if (k) {
      select(k, 0, true);
    } else {
      root.dataset.ended = 'true';
    }
  });

  function intercept(a, target) {
    a.addEventListener('click', function (ev) {
      var k = target();
      if (k && playable(k)) {
        ev.preventDefault();
        select(k, 0, true);
      }
    });
  }
  if (prev) {
    intercept(prev, function () { return neighbour(current, -1); });
  }
  if (next) {
    intercept(next, function () { return neighbour(current, 1); });
  }
  items.forEach(function (li) {
    Array.prototype.forEach.call(li.querySelectorAll('a.goto'), function (a) {
      intercept(a, function () { return Number(li.dataset.clip); });
    });
  });

  eventItems.forEach(function (li) {
    var a = li.querySelector('a.event-seek');
    if (a) {
      a.addEventListener('click', function (ev) {
        ev.preventDefault();
        seekSession(Number(li.dataset.offsetMs));
      });
    }
  });
  if (kindMenu) {
    kindMenu.addEventListener('change', function () {
      var k = kindMenu.value;
      eventItems.forEach(function (li) {
        li.hidden = k !== '' && li.dataset.kind !== k;
      });
    });
  }

  if (timeline) {
    timeline.addEventListener('click', function (ev) {
      var r = timeline.getBoundingClientRect();
      if (r.width > 0) {
        seekSession((ev.clientX - r.left) / r.width * total);
      }
    });
    timeline.addEventListener('keydown', function (ev) {
      var to = null;
      if (ev.key === 'ArrowRight') {
        to = sessionMs() + 5000;
      } else if (ev.key === 'ArrowLeft') {
        to = sessionMs() - 5000;
      } else if (ev.key === 'Home') {
        to = 0;
      } else if (ev.key === 'End') {
        to = total - 1;
      }
      if (to !== null) {
        ev.preventDefault();
        seekSession(to);
      }
    });
  }
  update();
}());
