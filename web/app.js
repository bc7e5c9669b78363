// VisionaryAI gallery page: one ES module, no framework, no build step.
//
// Layout of this file:
//   1. settings (API base URL)     4. render functions (DOM only via createElement/textContent)
//   2. state + element lookups     5. actions (suggestion, gallery pages, generation, viewer)
//   3. api (fetch + JSON errors)   6. wiring and start-up

const PAGE_SIZE = 12;
// Calls that reach the model end within the server's own deadline (220 s by default), which
// includes the SDK's waits when the model answers 429 with a Retry-After: waiting less would
// report a timeout in place of the server's answer. Azure drops any request at 230 s.
const TIMEOUT_MS = { default: 30_000, model: 240_000 };

// ---------------------------------------------------------------------------
// 1. Settings
// ---------------------------------------------------------------------------

/**
 * The Function App's base URL, without a trailing slash ("" = same origin).
 * Order: ?api= query parameter, then <meta name="visionary-api-base">, then same origin.
 */
function resolveApiBase() {
  const candidates = [
    new URLSearchParams(window.location.search).get('api'),
    document.querySelector('meta[name="visionary-api-base"]')?.getAttribute('content'),
  ];
  for (const candidate of candidates) {
    if (!candidate || !candidate.trim()) continue;
    const base = normalizeBase(candidate);
    if (base !== null) return base;
    console.warn(`VisionaryAI: ignoring API base ${JSON.stringify(candidate)} (not an http(s) URL).`);
  }
  return '';
}

/** An absolute http(s) URL without query, hash or trailing slash; null if unusable. */
function normalizeBase(value) {
  try {
    const url = new URL(value.trim(), window.location.href);
    if (url.protocol !== 'http:' && url.protocol !== 'https:') return null;
    const base = (url.origin + url.pathname).replace(/\/+$/, '');
    return base === window.location.origin ? '' : base;
  } catch {
    return null;
  }
}

// ---------------------------------------------------------------------------
// 2. State and elements
// ---------------------------------------------------------------------------

const state = {
  apiBase: '',
  suggestion: '',
  suggestionStatus: 'idle', // 'idle' | 'loading' | 'ready' | 'failed'
  nextCursor: null,
  shownBlobs: new Set(),
  galleryLoaded: false,
  sas: null, // a promise of the SAS that re-signs expired links (see relink)
  sasRenewAt: 0,
  loadingPage: false,
  generating: false,
  // The prompt of a generation whose outcome is not known to the page, and its Idempotency-Key:
  // Generate again with the same prompt is a retry of it, not a second picture.
  attempt: null, // { prompt, key } | null
  viewerReturnFocus: null,
  viewerPressOnBackdrop: false,
};

const byId = (id) => document.getElementById(id);

const els = Object.freeze({
  form: byId('prompt-form'),
  prompt: byId('prompt'),
  generate: byId('generate'),
  useSuggestion: byId('use-suggestion'),
  newSuggestion: byId('new-suggestion'),
  suggestion: byId('suggestion'),
  status: byId('status'),
  statusText: byId('status-text'),
  error: byId('error'),
  gallery: byId('gallery'),
  empty: byId('empty'),
  galleryHeading: byId('gallery-heading'),
  loadMore: byId('load-more'),
  viewer: byId('viewer'),
  viewerImage: byId('viewer-image'),
  viewerPrompt: byId('viewer-prompt'),
  viewerRevised: byId('viewer-revised'),
  viewerDate: byId('viewer-date'),
  closeViewer: byId('close-viewer'),
});

const DEFAULT_PLACEHOLDER = els.prompt.getAttribute('placeholder') || '';

// ---------------------------------------------------------------------------
// 3. API
// ---------------------------------------------------------------------------

/** An error whose message is a sentence meant for the user. */
class ApiError extends Error {
  constructor(message, { status = 0, code = 'network_error' } = {}) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
  }
}

/**
 * fetch `${base}/api/${path}` and return its JSON (or trimmed text with as: 'text').
 * Every failure becomes an ApiError with a sentence to show.
 */
async function request(
  path,
  { method = 'GET', json, as = 'json', timeoutMs = TIMEOUT_MS.default, headers = {} } = {},
) {
  const init = { method, headers: { Accept: as === 'json' ? 'application/json' : 'text/plain', ...headers } };
  if (json !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(json);
  }
  if (typeof AbortSignal !== 'undefined' && typeof AbortSignal.timeout === 'function') {
    init.signal = AbortSignal.timeout(timeoutMs);
  }

  let response;
  try {
    response = await fetch(`${state.apiBase}/api/${path}`, init);
  } catch (error) {
    throw networkError(error);
  }
  if (!response.ok) throw await errorFromResponse(response);

  try {
    return as === 'text' ? (await response.text()).trim() : await response.json();
  } catch (error) {
    if (error?.name === 'SyntaxError') {
      throw new ApiError(`The server sent an answer that could not be read (HTTP ${response.status}).`, {
        status: response.status,
        code: 'invalid_response',
      });
    }
    throw networkError(error);
  }
}

function networkError(error) {
  if (error?.name === 'TimeoutError' || error?.name === 'AbortError') {
    return new ApiError('The API did not answer in time. Please try again.', { code: 'timeout' });
  }
  const where = state.apiBase || window.location.origin;
  return new ApiError(`The API could not be reached (${where}). Check your connection and try again.`);
}

async function errorFromResponse(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // Not JSON (a proxy's HTML page, an empty body): fall back to a generic sentence.
  }
  const message =
    typeof body?.error === 'string' && body.error.trim()
      ? body.error.trim()
      : `Something went wrong on the server (HTTP ${response.status}). Please try again.`;
  const code = typeof body?.code === 'string' ? body.code : 'http_error';
  return new ApiError(message + waitHint(response), { status: response.status, code });
}

/**
 * For a 429 whose Retry-After is a short wait (the model service's), how long to wait: the
 * server's sentence says only "later", and a click before then waits out the SDK's retries for
 * another 429. A wait of an hour or more is the daily cap's, whose sentence names midnight UTC.
 */
function waitHint(response) {
  const seconds = Number(response.headers.get('Retry-After'));
  if (response.status !== 429 || !Number.isInteger(seconds) || seconds < 1 || seconds >= 3600) return '';
  const minutes = Math.round(seconds / 60);
  const wait = seconds < 90 ? `${seconds} second${seconds === 1 ? '' : 's'}` : `${minutes} minutes`;
  return ` Wait about ${wait} before trying again.`;
}

const api = {
  /** One prompt suggestion (text/plain). */
  suggestion: () => request('getChatGPTSuggestion', { as: 'text', timeoutMs: TIMEOUT_MS.model }),

  /** One gallery page, newest first: { imageUrls, nextCursor }. */
  images: ({ limit, cursor }) => {
    const query = new URLSearchParams({ limit: String(limit) });
    if (cursor) query.set('cursor', cursor);
    return request(`getImages?${query}`);
  },

  /** A read-only SAS for the container: { sasToken, containerUrl, expiresOn }. */
  sas: () => request('sasToken'),

  /** Draw and store one picture: the 201 answer. A repeat with the same key gets the first one's. */
  generate: (prompt, idempotencyKey) =>
    request('generateImage', {
      method: 'POST',
      json: { prompt },
      headers: { 'Idempotency-Key': idempotencyKey },
      timeoutMs: TIMEOUT_MS.model,
    }),
};

// ---------------------------------------------------------------------------
// 4. Rendering
// ---------------------------------------------------------------------------

function asText(value) {
  return typeof value === 'string' ? value : '';
}

/** The fields the page uses, as strings; null if the item has no loadable url. */
function toImage(raw) {
  const url = asText(raw?.url);
  if (!url) return null;
  return {
    url,
    blob: asText(raw.blob) || url,
    name: asText(raw.name),
    prompt: asText(raw.prompt),
    revisedPrompt: asText(raw.revisedPrompt),
    createdAt: asText(raw.createdAt),
  };
}

function altText(image) {
  return image.prompt || image.name || 'Generated image';
}

function formatDate(iso) {
  const date = new Date(iso);
  if (!iso || Number.isNaN(date.getTime())) return iso || 'unknown date';
  return date.toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'medium' });
}

function prefersReducedMotion() {
  return window.matchMedia?.('(prefers-reduced-motion: reduce)').matches ?? false;
}

function showError(errorOrMessage) {
  let message = errorOrMessage;
  if (errorOrMessage instanceof ApiError) {
    message = errorOrMessage.message;
  } else if (typeof errorOrMessage !== 'string') {
    console.error(errorOrMessage);
    message = 'Something unexpected went wrong. Please reload the page.';
  }
  els.error.textContent = message;
  els.error.hidden = false;
  els.error.scrollIntoView({ block: 'nearest', behavior: prefersReducedMotion() ? 'auto' : 'smooth' });
}

function clearError() {
  els.error.hidden = true;
  els.error.textContent = '';
}

/**
 * A button that waits for its own request: aria-disabled, not disabled. A disabled button drops
 * the focus a keyboard or screen reader user pressed it with; this one keeps it and is announced
 * as unavailable, and its handler ignores presses meanwhile.
 */
function setWorking(button, working) {
  button.setAttribute('aria-disabled', String(working));
}

/**
 * Say `text` in the status line (a live region), shown with its spinner, or for screen readers
 * only with shown: false. The region itself stays in the page, out of sight when idle.
 */
function renderStatus(text, { shown = true } = {}) {
  els.statusText.textContent = text || '';
  els.status.classList.toggle('visually-hidden', !(text && shown));
}

/** `done`: what to tell screen readers once a picture has arrived (the grid shows it). */
function renderGenerating(done = '') {
  setWorking(els.generate, state.generating);
  // A class, not aria-busy: screen readers may hold back what a busy element's live region says.
  els.form.classList.toggle('is-generating', state.generating);
  if (state.generating) renderStatus('Generating your image… this can take up to a minute.');
  else renderStatus(done, { shown: false });
}

function renderSuggestion() {
  els.suggestion.textContent = state.suggestion;
  els.suggestion.dataset.state = state.suggestionStatus;
  els.prompt.placeholder = state.suggestion || DEFAULT_PLACEHOLDER;
  els.useSuggestion.disabled = !state.suggestion;
  const loading = state.suggestionStatus === 'loading';
  setWorking(els.newSuggestion, loading);
  els.newSuggestion.setAttribute('aria-busy', String(loading));
}

function renderPager() {
  // Until a first page has arrived (storage away as the page opened), the button tries it again.
  els.loadMore.textContent = state.galleryLoaded ? 'Load more' : 'Try again';
  els.loadMore.hidden = state.galleryLoaded ? state.nextCursor === null : state.loadingPage;
  setWorking(els.loadMore, state.loadingPage);
  els.loadMore.setAttribute('aria-busy', String(state.loadingPage));
  els.gallery.setAttribute('aria-busy', String(state.loadingPage));
}

function renderEmpty() {
  els.empty.hidden = !(state.galleryLoaded && els.gallery.children.length === 0);
}

function createTile(image) {
  const tile = document.createElement('li');
  tile.className = 'tile';
  tile.dataset.blob = image.blob;

  // A real button inside the list item: screen readers announce it as one (named by the img's
  // alt, the prompt), and Enter and Space open the viewer as a click does.
  const button = document.createElement('button');
  button.type = 'button';
  button.className = 'tile-button';

  const img = document.createElement('img');
  img.loading = 'lazy'; // before src, so the browser never starts an eager load
  img.decoding = 'async';
  img.alt = altText(image);
  img.src = image.url;
  img.addEventListener('error', () => relink(image, img, tile), { once: true });

  const caption = document.createElement('span');
  caption.className = 'caption';
  caption.textContent = image.prompt || image.name;
  caption.setAttribute('aria-hidden', 'true'); // the img alt already says it

  button.append(img, caption);
  button.addEventListener('click', () => openViewer(image, button));
  tile.append(button);
  return tile;
}

/**
 * Links live about half an hour; a page left open longer has tiles whose links have expired
 * (storage answers 403). Such a tile gets one more try, with a link signed afresh.
 */
async function relink(image, img, tile) {
  try {
    const sas = await freshSas();
    const path = image.blob.split('/').map(encodeURIComponent).join('/');
    image.url = `${sas.containerUrl}/${path}?${sas.sasToken}`; // the viewer opens it too
    img.addEventListener('error', () => tile.classList.add('is-broken'), { once: true });
    img.src = image.url;
  } catch {
    tile.classList.add('is-broken');
  }
}

/** One sasToken request for all the tiles that need it, kept until a minute before it expires. */
function freshSas() {
  const now = Date.now();
  if (!state.sas || now >= state.sasRenewAt) {
    state.sas = api.sas();
    state.sasRenewAt = now + 60_000; // until its expiry is known: a failed request is tried again
    state.sas.then(
      (sas) => {
        state.sasRenewAt = Date.parse(sas.expiresOn) - 60_000 || now;
      },
      () => {},
    );
  }
  return state.sas;
}

/**
 * Add images not shown yet (by blob), at the end or at the start of the grid, in order; return
 * the first tile added (null if none).
 */
function addImages(rawImages, { prepend = false } = {}) {
  const fragment = document.createDocumentFragment();
  for (const raw of rawImages) {
    const image = toImage(raw);
    if (!image || state.shownBlobs.has(image.blob)) continue;
    state.shownBlobs.add(image.blob);
    fragment.append(createTile(image));
  }
  const first = fragment.firstElementChild;
  if (prepend) els.gallery.prepend(fragment);
  else els.gallery.append(fragment);
  renderEmpty();
  return first;
}

// ---------------------------------------------------------------------------
// 5. Actions
// ---------------------------------------------------------------------------

async function refreshSuggestion() {
  if (state.suggestionStatus === 'loading') return;
  state.suggestionStatus = 'loading';
  renderSuggestion();
  try {
    const text = await api.suggestion();
    if (text) state.suggestion = text;
    state.suggestionStatus = state.suggestion ? 'ready' : 'failed';
  } catch (error) {
    state.suggestionStatus = 'failed';
    showError(error);
  } finally {
    renderSuggestion();
  }
}

/** Load the next gallery page; return its first new tile (null if none or failed). */
async function loadPage() {
  if (state.loadingPage) return null;
  state.loadingPage = true;
  renderPager();
  let first = null;
  try {
    const page = await api.images({ limit: PAGE_SIZE, cursor: state.nextCursor });
    first = addImages(Array.isArray(page?.imageUrls) ? page.imageUrls : []);
    state.nextCursor = typeof page?.nextCursor === 'string' && page.nextCursor ? page.nextCursor : null;
    state.galleryLoaded = true;
  } catch (error) {
    showError(error);
  } finally {
    state.loadingPage = false;
    renderPager();
    renderEmpty();
  }
  return first;
}

/** Load more, or Try again when the first page failed. */
async function loadMore() {
  if (state.loadingPage) return;
  clearError();
  const hadFocus = document.activeElement === els.loadMore;
  const first = await loadPage();
  // The button hides itself after the last page (and while Try again tries): the focus it had
  // falls back to the top of the page (Chromium), or stays on the hidden button (Firefox). It
  // moves on to the first picture the page added.
  const focus = document.activeElement;
  if (hadFocus && (focus === document.body || (focus === els.loadMore && els.loadMore.hidden))) {
    const next = first?.querySelector('button') ?? (els.loadMore.hidden ? els.galleryHeading : els.loadMore);
    next.focus();
  }
}

async function generate() {
  if (state.generating) return;
  const prompt = els.prompt.value.trim() || state.suggestion;
  if (!prompt) {
    showError('Write a prompt first, or ask for a suggestion.');
    els.prompt.focus();
    return;
  }
  clearError();
  state.generating = true;
  renderGenerating();
  if (state.attempt?.prompt !== prompt) state.attempt = { prompt, key: newIdempotencyKey() };
  let done = '';
  try {
    const created = await api.generate(prompt, state.attempt.key);
    state.attempt = null; // the picture arrived: the same prompt again asks for another one
    addImages([{ prompt, ...created }], { prepend: true });
    if (els.prompt.value.trim() === prompt) els.prompt.value = ''; // not what was typed meanwhile
    done = 'Your image is ready: it is first in the gallery.';
  } catch (error) {
    if (error instanceof ApiError && error.code === 'in_progress') {
      showError('Your picture is still being drawn; click Generate again in a moment to get it.');
    } else {
      showError(error);
    }
  } finally {
    state.generating = false;
    renderGenerating(done);
  }
}

/** A key unique to one picture asked for. getRandomValues, unlike randomUUID, works on plain http too. */
function newIdempotencyKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (byte) => byte.toString(16).padStart(2, '0')).join('');
}

function useSuggestion() {
  if (!state.suggestion) return;
  els.prompt.value = state.suggestion;
  els.prompt.focus();
}

function openViewer(image, opener) {
  els.viewerImage.src = image.url;
  els.viewerImage.alt = altText(image);
  els.viewerPrompt.textContent = image.prompt || image.name;
  const revised = image.revisedPrompt && image.revisedPrompt !== image.prompt;
  els.viewerRevised.textContent = revised ? `Drawn as: ${image.revisedPrompt}` : '';
  els.viewerRevised.hidden = !revised;
  els.viewerDate.textContent = formatDate(image.createdAt);
  els.viewerDate.dateTime = image.createdAt;
  state.viewerReturnFocus = opener;
  if (!els.viewer.open) els.viewer.showModal();
}

function closeViewer() {
  if (els.viewer.open) els.viewer.close();
}

function onViewerClosed() {
  els.viewerImage.removeAttribute('src');
  // The browser puts the focus back as the dialog closes; this event comes a little later, when a
  // quick Tab may already have moved it on. Only a focus left on the page or the dialog returns.
  const focused = document.activeElement;
  if (!focused || focused === document.body || els.viewer.contains(focused)) state.viewerReturnFocus?.focus();
  state.viewerReturnFocus = null;
}

// ---------------------------------------------------------------------------
// 6. Wiring and start-up
// ---------------------------------------------------------------------------

function bindEvents() {
  els.form.addEventListener('submit', (event) => {
    event.preventDefault();
    generate();
  });
  els.prompt.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      els.form.requestSubmit();
    }
  });
  els.useSuggestion.addEventListener('click', useSuggestion);
  els.newSuggestion.addEventListener('click', () => {
    if (state.suggestionStatus === 'loading') return;
    clearError();
    refreshSuggestion();
  });
  els.loadMore.addEventListener('click', loadMore);
  els.closeViewer.addEventListener('click', closeViewer);
  // Escape closes a modal <dialog> natively. The content fills the dialog box, so a press
  // whose target is the dialog itself is on the backdrop; both the press and the release must
  // be there (a text selection dragged out of the prompt must not close the viewer).
  els.viewer.addEventListener('pointerdown', (event) => {
    state.viewerPressOnBackdrop = event.target === els.viewer;
  });
  els.viewer.addEventListener('click', (event) => {
    const onBackdrop = event.target === els.viewer && state.viewerPressOnBackdrop;
    state.viewerPressOnBackdrop = false;
    if (onBackdrop) closeViewer();
  });
  els.viewer.addEventListener('close', onViewerClosed);
}

function init() {
  state.apiBase = resolveApiBase();
  bindEvents();
  renderSuggestion();
  renderGenerating();
  renderPager();
  renderEmpty();
  refreshSuggestion();
  loadPage();
}

init();
