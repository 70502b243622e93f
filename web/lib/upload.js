// Files in ComfyUI's input/temp/output folders, as the host's own frontend handles them:
// upload through POST /upload/image, refer to them as "subfolder/name [type]" (LoadImage's
// annotated names), and read them back through GET /view.
import { api } from "../../../scripts/api.js";

/** Upload a Blob with POST /upload/image. Returns the server's {name, subfolder, type}. */
export async function uploadImage(blob, filename, { subfolder = "", type = "input", overwrite = false } = {}) {
  const body = new FormData();
  body.append("image", blob, filename);
  body.append("type", type);
  body.append("subfolder", subfolder);
  if (overwrite) body.append("overwrite", "true");
  const response = await api.fetchApi("/upload/image", { method: "POST", body });
  if (!response.ok) throw new Error(`upload of ${filename} failed: HTTP ${response.status}`);
  const data = await response.json();
  return { name: data.name, subfolder: data.subfolder ?? subfolder, type: data.type ?? type };
}

/** {name, subfolder, type} -> "subfolder/name [type]" (the form folder_paths.get_annotated_filepath reads). */
export function annotatedName({ name, subfolder = "", type = "input" }) {
  return `${subfolder ? `${subfolder}/` : ""}${name} [${type}]`;
}

/** "subfolder/name [type]" -> {filename, subfolder, type}; null for an empty reference. */
export function parseAnnotated(reference) {
  const text = String(reference ?? "").trim();
  if (!text) return null;
  const match = /^(.*?)\s*\[(input|output|temp)\]$/.exec(text);
  const path = match ? match[1] : text;
  const type = match ? match[2] : "input";
  const slash = path.lastIndexOf("/");
  return { filename: path.slice(slash + 1), subfolder: slash >= 0 ? path.slice(0, slash) : "", type };
}

/** URL of GET /view for {filename, subfolder, type}. */
export function viewUrl({ filename, subfolder = "", type = "input" }) {
  const params = new URLSearchParams({ filename, subfolder, type });
  return api.apiURL(`/view?${params.toString()}`);
}

/** Load an image URL into an HTMLImageElement (rejects with the URL on failure). */
export function loadImage(url) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error(`could not load ${url}`));
    image.src = url;
  });
}
