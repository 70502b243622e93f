// Guided Synthesis frontend entry. Widgets (stroke canvas, region palette editor) register here.
import { app } from "../../scripts/app.js";
import { registerStrokeCanvas } from "./widgets/stroke_canvas.js";

app.registerExtension({
  name: "guidedsynthesis.core",
});

registerStrokeCanvas();
