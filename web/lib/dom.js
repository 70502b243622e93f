// Small DOM helpers shared by the pack's widgets. User text only ever goes in through
// textContent / value / setAttribute: never innerHTML.

/**
 * Create an element. attrs: plain attributes (set with setAttribute), plus the special keys
 * `style` (object), `text` (textContent), `on` (object of event listeners) and `dataset`.
 */
export function el(tag, attrs = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null) continue;
    if (key === "style") Object.assign(node.style, value);
    else if (key === "text") node.textContent = String(value);
    else if (key === "on") for (const [event, fn] of Object.entries(value)) node.addEventListener(event, fn);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, String(value));
  }
  for (const child of [].concat(children)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Remove every child of a node. */
export function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
}

/** Run `after` after an object's method (e.g. a node prototype's onNodeCreated), keeping the original. */
export function chain(object, method, after) {
  const original = object[method];
  object[method] = function (...args) {
    const result = original?.apply(this, args);
    after.apply(this, args);
    return result;
  };
}
