// Guided Synthesis frontend entry. Widgets (stroke canvas, region palette editor) register here.
import { app } from "../../scripts/app.js";

app.registerExtension({
  name: "guided_synthesis.core",
});
