curl https://modelapi.holmesai.xyz/$SERVICE_ID/v1/images/generate \
  -H "Content-Type: application/json" \
  -H "Authorization: Bearer $API_KEY" \
  -d '{
        "model": "$MODEL",
        "prompt": "a cat ",
        "steps": 20,
        "height": 512,
        "width": 512,
        "cfg_scale": 10
   }' \
   -o out.png
