curl -X POST "https://api.hyperbolic.xyz/v1/image/generation" \
-H "Content-Type: application/json" \
-H "Authorization: Bearer $HYPERBOLIC_API_KEY" \
-d '{
"model_name": "SDXL1.0-base",
"prompt": "a photo of an astronaut riding a horse on mars",
"height": 1024,
"width": 1024,
"backend": "auto"
}'
